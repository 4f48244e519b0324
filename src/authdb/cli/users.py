"""``authdb users ...``: listing, showing, enabling/disabling, deleting and importing users.

USER arguments accept a username, an email, a numeric id or ``id:N``. Every command calls the
same service functions as the admin API, and is audited with the CLI as the client.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from authdb.auth import Auth
from authdb.cli.common import fail, run
from authdb.db.models import User
from authdb.errors import AuthError
from authdb.http.schemas import UserRead
from authdb.services import admin, mfa, provisioning
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
    except RecursionError:
        fail(f"line {number}: not valid JSON (nested too deeply)")
    if not isinstance(record, dict):
        fail(f"line {number}: expected a JSON object")
    unknown = set(record) - _IMPORT_FIELDS
    if unknown:
        fail(f"line {number}: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("username", "email"):
        if not isinstance(record.get(name), str):
            fail(f"line {number}: {name} is required and must be a string")
    for name, kinds, wanted in _OPTIONAL_TYPES:
        if name in record and not isinstance(record[name], kinds):
            fail(f"line {number}: {name} must be {wanted}")
    return record


# Checked here so that a wrong type is named with its line, never met by the database.
_OPTIONAL_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("full_name", (str, type(None)), "a string or null"),
    ("password", str, "a string"),
    ("hashed_password", str, "a string"),
    ("is_superuser", bool, "true or false"),
    ("is_verified", bool, "true or false"),
    ("disabled", bool, "true or false"),
)


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
    if not records:
        fail(f"{file} holds no users")

    async def _import(auth: Any) -> int:
        batch: list[provisioning.NewUser] = []
        seen: dict[str, int] = {}
        for number, record in records:
            try:
                new = await provisioning.prepare_user(
                    auth.core.hasher, validators=auth.core.password_validators, **record
                )
            except (AuthError, TypeError) as exc:
                fail(f"line {number}: {getattr(exc, 'detail', exc)}")
            for key in (new.username.casefold(), new.email.casefold()):
                if key in seen:
                    fail(f"line {number}: duplicates line {seen[key]} ({key})")
                seen[key] = number
            batch.append(new)
        try:
            await provisioning.insert_users(auth.core, batch, client=CLI_CLIENT)
        except AuthError as exc:
            fail(f"nothing imported: {exc.detail} (one of the users exists already)")
        return len(batch)

    count = run(_import)
    typer.echo(f"imported {count} users")


UserArg = Annotated[str, typer.Argument(help="Username, email, numeric id or id:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON, as the HTTP API does.")]


def _public(user: User) -> dict[str, Any]:
    """The user as the API shows it: never a hash."""
    return UserRead.model_validate(user).model_dump(mode="json")


def _safe(text: str) -> str:
    """``text`` with control and format characters escaped: data must not drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _name(user: User) -> str:
    return f"{_safe(user.username)} (id {user.id})"


def _flags(user: User) -> str:
    flags = [
        name
        for name, on in (
            ("superuser", user.is_superuser),
            ("disabled", user.disabled),
            ("unverified", not user.is_verified),
            ("mfa", user.mfa_enabled),
        )
        if on
    ]
    return ",".join(flags) or "-"


@app.command("list")
def list_users(
    search: Annotated[
        str | None, typer.Option(help="Only users whose username, email or full name contain this.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List users by id."""

    async def _all(auth: Auth) -> list[User]:
        users: list[User] = []
        while True:  # the API's pages, until the last
            page = await admin.list_users(
                auth.core, offset=len(users), limit=admin.MAX_PAGE_SIZE, search=search
            )
            users.extend(page.items)
            if not page.items or len(users) >= page.total:
                return users

    users = run(_all)
    if as_json:
        typer.echo(json.dumps([_public(u) for u in users], ensure_ascii=False))
        return
    if not users:
        typer.echo("no users")
        return
    rows = [("ID", "USERNAME", "EMAIL", "FULL NAME", "FLAGS")] + [
        (str(u.id), *(_safe(v or "-") for v in (u.username, u.email, u.full_name)), _flags(u))
        for u in users
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        typer.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[4]]))


@app.command()
def show(user: UserArg, as_json: JsonOpt = False) -> None:
    """Show one user."""
    found = _public(run(lambda auth: admin.find_user(auth.core, user)))
    if as_json:
        typer.echo(json.dumps(found, ensure_ascii=False))
        return
    for key, value in found.items():
        typer.echo(f"{key}: {_text(value)}")


def _text(value: object) -> str:
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else _safe(str(value))


def _update(ref: str, changes: admin.UserChanges) -> User:
    """Find ``ref`` and apply ``changes`` through the admin service, in one run."""

    async def _work(auth: Auth) -> User:
        target = await admin.find_user(auth.core, ref)
        return await admin.update_user(auth.core, target.id, changes, client=CLI_CLIENT)

    return run(_work)


@app.command()
def disable(user: UserArg) -> None:
    """Disable a user; all of their sessions end at once."""
    done = _update(user, {"disabled": True})
    typer.echo(f"disabled {_name(done)}; all of their sessions have ended")


@app.command()
def enable(user: UserArg) -> None:
    """Enable a disabled user."""
    typer.echo(f"enabled {_name(_update(user, {'disabled': False}))}")


@app.command("set-superuser")
def set_superuser(
    user: UserArg,
    off: Annotated[bool, typer.Option("--off", help="Remove the superuser flag instead.")] = False,
) -> None:
    """Make a user a superuser (or, with --off, no longer one)."""
    done = _update(user, {"is_superuser": not off})
    typer.echo(f"{_name(done)} is {'no longer' if off else 'now'} a superuser")


@app.command("reset-mfa")
def reset_mfa(user: UserArg) -> None:
    """Turn a user's two-factor authentication off (lost authenticator and recovery codes);
    they are told by email and set it up again from their account."""

    async def _work(auth: Auth) -> tuple[User, bool]:
        target = await admin.find_user(auth.core, user)
        notice = await mfa.reset(auth.core, target.id, CLI_CLIENT)
        if notice is not None:
            await auth.mailer.send(notice.to, notice.template, **notice.context)
        return target, target.mfa_enabled

    target, was_on = run(_work)
    if was_on:
        typer.echo(f"turned off two-factor authentication for {_name(target)}")
    else:
        typer.echo(f"{_name(target)} had no two-factor authentication; nothing changed")


@app.command()
def delete(
    user: UserArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a user and their sessions (asks first unless --yes)."""
    if not yes and not sys.stdin.isatty():
        fail("refusing to delete without confirmation: pass --yes")
    target = run(lambda auth: admin.find_user(auth.core, user))
    if not yes and not typer.confirm(f"Delete {_name(target)} and all their sessions?"):
        fail("not deleted")
    run(lambda auth: admin.delete_user(auth.core, target.id, client=CLI_CLIENT))
    typer.echo(f"deleted {_name(target)}")
