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


def _state(key: KeyStatus, hmac: bool) -> str:
    if hmac and key.state in ("current", "next"):
        return f"{key.state} (unused while AUTHDB_JWT_ALGORITHM is HMAC)"
    if key.state == "next":
        return "next (published, signs after the next rotation)"
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
    hmac = algorithm.startswith("HS")
    if hmac:
        typer.echo(f"AUTHDB_JWT_ALGORITHM is {algorithm}: tokens are signed with the secret key")
    if not keys:
        typer.echo("no signing keys")
        return
    typer.echo(f"{'kid':<44}  {'algorithm':<9}  {'created':<20}  state")
    for key in keys:
        created = _time(key.created_at)
        typer.echo(f"{key.kid:<44}  {key.algorithm:<9}  {created:<20}  {_state(key, hmac)}")


@app.command(
    help="Make the next key (already in the JWKS) current at once and publish a new next key. "
    "Tokens of the previous key keep working until they expire."
)
def rotate() -> None:
    kid = run(lambda auth: signing_keys.rotate(auth.core, CLI_CLIENT))
    algorithm = settings().jwt_algorithm
    typer.echo(f"new current signing key {kid} ({algorithm})")


@app.command(
    help="Stop accepting a key's tokens at once (a leaked key). Retiring the current key makes "
    "the next one current; every process stops using it within AUTHDB_JWT_KEYS_REFRESH_SECONDS.",
    # A kid is base64url and may begin with "-": it must not be taken for an option.
    context_settings={"ignore_unknown_options": True},
)
def retire(
    kid: Annotated[
        str, typer.Argument(metavar="KID", help="The key's kid, from `authdb keys list`.")
    ],
) -> None:
    new = run(lambda auth: signing_keys.retire(auth.core, kid, CLI_CLIENT))
    typer.echo(f"retired {kid}" + (f"; new current signing key {new}" if new else ""))
