"""Helpers shared by the commands: running services, one-line errors, reading passwords."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError

from authdb.auth import Auth
from authdb.errors import AuthError
from authdb.settings import Settings

T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings(database_url: str | None = None) -> Settings:
    """Settings from the environment, or a one-line error naming the bad variable."""
    try:
        return Settings(database_url=database_url) if database_url else Settings()
    except ValidationError as exc:
        given = {"database_url": "--database-url"} if database_url else {}
        problems = [settings_problem(error, given) for error in exc.errors()]
        fail(f"invalid settings: {'; '.join(problems)}")
    except SettingsError as exc:  # a value pydantic-settings could not even decode
        fail(f"invalid settings: {_one_line(str(exc))}")


def settings_problem(error: ErrorDetails, options: Mapping[str, str] | None = None) -> str:
    """``AUTHDB_NAME: reason`` for one validation error (or ``--option: reason``).

    The variable is the error's first location only (``cors_origins.1`` is still
    AUTHDB_CORS_ORIGINS); a check across settings has no location and names them itself.
    """
    message = error["msg"]
    if error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    message = _one_line(message)
    if not error["loc"]:
        return message
    field = str(error["loc"][0])
    name = (options or {}).get(field, f"AUTHDB_{field.upper()}")
    return f"{name}: {message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(work: Callable[[Auth], Awaitable[T]], database_url: str | None = None) -> T:
    """Start authdb (checking the schema), run ``work``, and turn any failure into one line."""

    async def _main() -> T:
        auth = Auth(settings(database_url))
        try:
            await auth.startup(issue_tokens=False)
            return await work(auth)
        finally:
            await auth.shutdown()

    try:
        return asyncio.run(_main())
    except typer.Exit:
        raise
    except AuthError as exc:
        fail(exc.detail)
    except Exception as exc:
        fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def read_password(password_stdin: bool, *, confirm: bool = True) -> str:
    """From standard input (one line) or an interactive prompt; never from an argument."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("no password on standard input")
        return password
    if not sys.stdin.isatty():
        fail("no terminal to prompt for a password: use --password-stdin")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return value
