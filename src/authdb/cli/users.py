"""``authdb users ...``: listing, showing, enabling/disabling and deleting users; importing
them is ``authdb.cli.user_import``.

USER arguments accept a username, an email, a numeric id or ``id:N``. Every command calls the
same service functions as the admin API, and is audited with the CLI as the client.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from authdb.auth import Auth
from authdb.cli.common import fail, run
from authdb.cli.user_import import import_command
from authdb.db.models import User
from authdb.http.schemas import UserRead
from authdb.services import admin, mfa
from authdb.services.core import CLI_CLIENT

app = typer.Typer(help="Manage users.", no_args_is_help=True)

app.command("import")(import_command)

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
