"""Helpers shared by the commands: running services, one-line errors, reading passwords."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import typer
from pydantic import ValidationError

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
        problems = [
            f"AUTHDB_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        ]
        fail(f"invalid settings: {'; '.join(problems)}")


def run(work: Callable[[Auth], Awaitable[T]], database_url: str | None = None) -> T:
    """Start authdb (checking the schema), run ``work``, and turn any failure into one line."""

    async def _main() -> T:
        auth = Auth(settings(database_url))
        try:
            await auth.startup()
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
