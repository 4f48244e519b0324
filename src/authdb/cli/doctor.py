"""``authdb doctor``: check a deployment, one line per check, non-zero exit on any error."""

from __future__ import annotations

import typer


def doctor() -> None:
    """Check this deployment's settings, database, Redis, SMTP and clock."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(1)
