"""``authdb config`` (the settings in effect, secrets masked) and ``authdb --version``."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from typing import Annotated

import typer

from authdb import settings_env
from authdb.cli.common import settings
from authdb.settings_checks import variable


def version() -> str:
    """The installed version of authdb, from its package metadata."""
    try:
        return distribution_version("authdb")
    except PackageNotFoundError:  # a source tree on sys.path, never installed
        return "unknown (not installed)"


def print_version(value: bool) -> None:
    """``--version``: print ``authdb X.Y.Z`` and exit."""
    if value:
        typer.echo(f"authdb {version()}")
        raise typer.Exit()


def config(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: each variable's value and source.")
    ] = False,
) -> None:
    """Print every setting in effect and where it came from; secrets are masked. Each sign-in
    provider's own variables follow (AUTHDB_OAUTH_<NAME>_*), its client secret masked."""
    # Shown even when an extra is missing: seeing the settings is how one finds out why.
    current = settings(extras=False)
    rows = {
        variable(field): (settings_env.shown(current, field), settings_env.source(current, field))
        for field in settings_env.fields(current)
    }
    if as_json:
        document = {
            name: {"value": value, "source": where} for name, (value, where) in rows.items()
        }
        typer.echo(json.dumps(document, indent=2))
        return
    for name, (value, where) in rows.items():
        typer.echo(f"{name}={settings_env.as_text(value)}  (source: {where})")
