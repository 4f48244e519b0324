"""``authdb keys list|rotate|retire``: the key pairs that sign access tokens.

Only in use with ``AUTHDB_JWT_ALGORITHM`` RS256, ES256 or EdDSA; under HS256 the secret key
signs and ``list`` shows any keys left from an earlier setting.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from authdb.cli.common import run, settings
from authdb.services import signing_keys
from authdb.services.core import CLI_CLIENT
from authdb.services.signing_keys import KeyStatus

app = typer.Typer(help="Token signing keys (RS256, ES256, EdDSA).", no_args_is_help=True)


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _state(key: KeyStatus) -> str:
    if key.state == "retiring":
        return f"retiring (verifies until {_time(key.until)})"
    if key.state in ("expired", "retired"):
        return f"{key.state} {_time(key.until)}"
    return key.state


@app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Every signing key, newest first: kid, algorithm, created, state."""
    keys = run(lambda auth: signing_keys.list_keys(auth.core))
    if as_json:
        rows = [
            {
                "kid": key.kid,
                "algorithm": key.algorithm,
                "created_at": _time(key.created_at),
                "state": key.state,
                "until": None if key.until is None else _time(key.until),
            }
            for key in keys
        ]
        typer.echo(json.dumps(rows))
        return
    algorithm = settings().jwt_algorithm
    if algorithm.startswith("HS"):
        typer.echo(f"AUTHDB_JWT_ALGORITHM is {algorithm}: tokens are signed with the secret key")
    if not keys:
        typer.echo("no signing keys")
        return
    typer.echo(f"{'kid':<44}  {'algorithm':<9}  {'created':<20}  state")
    for key in keys:
        created = _time(key.created_at)
        typer.echo(f"{key.kid:<44}  {key.algorithm:<9}  {created:<20}  {_state(key)}")


@app.command()
def rotate() -> None:
    """Make a new key current at once; tokens of the previous one keep working until they
    expire, and its public key stays in the JWKS until then."""
    kid = run(lambda auth: signing_keys.rotate(auth.core, CLI_CLIENT))
    typer.echo(f"new current signing key {kid}")


@app.command()
def retire(
    kid: Annotated[str, typer.Argument(help="The key's kid, from `authdb keys list`.")],
) -> None:
    """Stop accepting a key's tokens at once (a leaked key). The current key is replaced by a
    new one; every process stops using it within AUTHDB_JWT_KEYS_REFRESH_SECONDS."""
    new = run(lambda auth: signing_keys.retire(auth.core, kid, CLI_CLIENT))
    typer.echo(f"retired {kid}" + (f"; new current signing key {new}" if new else ""))
