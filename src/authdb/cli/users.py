"""``authdb users ...``: listing, enabling/disabling, deleting and importing users."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from authdb.cli.common import fail, run
from authdb.errors import AuthError
from authdb.passwords import Hasher
from authdb.services import admin
from authdb.services.core import CLI_CLIENT

app = typer.Typer(help="Manage users.", no_args_is_help=True)

_IMPORT_FIELDS = {
    "username", "email", "full_name", "is_superuser", "is_verified", "disabled",
    "password", "hashed_password",
}  # fmt: skip


def _parse_line(number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        fail(f"line {number}: not valid JSON ({exc.msg})")
    if not isinstance(record, dict):
        fail(f"line {number}: expected a JSON object")
    unknown = set(record) - _IMPORT_FIELDS
    if unknown:
        fail(f"line {number}: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("username", "email"):
        if not isinstance(record.get(name), str):
            fail(f"line {number}: {name} is required and must be a string")
    return record


@app.command("import")
def import_users(
    file: Annotated[Path, typer.Argument(help="JSON Lines file, one user a line.")],
) -> None:
    """Import users; a file with any bad line imports nothing and names the line."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}")
    records = [(n, _parse_line(n, line)) for n, line in enumerate(lines, 1) if line.strip()]
    hasher = Hasher()
    if not records:
        fail(f"{file} holds no users")

    async def _import(auth: Any) -> int:
        batch: list[admin.NewUser] = []
        seen: dict[str, int] = {}
        for number, record in records:
            try:
                new = await admin.prepare_user(hasher, **record)
            except (AuthError, TypeError) as exc:
                fail(f"line {number}: {getattr(exc, 'detail', exc)}")
            for key in (new.username.casefold(), new.email.casefold()):
                if key in seen:
                    fail(f"line {number}: duplicates line {seen[key]} ({key})")
                seen[key] = number
            batch.append(new)
        try:
            await admin.insert_users(auth.core, batch, client=CLI_CLIENT)
        except AuthError as exc:
            fail(f"nothing imported: {exc.detail} (one of the users exists already)")
        return len(batch)

    count = run(_import)
    typer.echo(f"imported {count} users")
