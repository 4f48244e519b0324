"""``authdb audit``: print the security event log (placeholder, filled by the abuse work)."""

import typer


def audit() -> None:
    """Print audit events."""
    typer.echo("not implemented yet")
