"""Helpers shared by the commands: settings, running services, one-line errors, passwords."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError
from sqlalchemy.exc import DBAPIError

from authdb import extras as authdb_extras
from authdb import settings_checks as checks
from authdb import settings_env
from authdb.auth import Auth, SchemaOutOfDate
from authdb.db.engine import sqlite_file_missing
from authdb.errors import AuthError
from authdb.extras import MissingExtra
from authdb.mail import TemplateProblem
from authdb.settings import Settings

T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings(database_url: str | None = None, *, extras: bool = True) -> Settings:
    """Settings from the environment, or a one-line error naming the bad variable.

    ``extras``: also refuse, naming the ``pip install``, when a setting needs an optional
    dependency that is missing (asyncpg for PostgreSQL, redis for AUTHDB_REDIS_URL).
    """
    try:
        config = Settings(database_url=database_url) if database_url else Settings()
    except ValidationError as exc:
        given = {"database_url": "--database-url"} if database_url else {}
        problems = [settings_problem(error, given) for error in exc.errors()]
        fail(f"invalid settings: {'; '.join(problems)}")
    except SettingsError as exc:  # a value pydantic-settings could not even decode
        fail(f"invalid settings: {_one_line(str(exc))}")
    if extras:
        try:
            authdb_extras.check(config)
        except MissingExtra as exc:
            fail(str(exc))
    return config


def settings_problem(error: ErrorDetails, options: Mapping[str, str] | None = None) -> str:
    """``AUTHDB_NAME: reason`` for one validation error (or ``--option: reason``)."""
    return checks.problem(error, lambda field: (options or {}).get(field, checks.variable(field)))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def warn_unknown_settings() -> None:
    """``warning: unknown setting AUTHDB_X (did you mean AUTHDB_Y?)`` on stderr for each
    ``AUTHDB_*`` variable of the environment or ./.env that no setting reads."""
    unknown = settings_env.unknown_settings(Settings.model_config.get("env_file"))
    for item in unknown:
        typer.echo(f"warning: {item.message}", err=True)
    settings_env.mark_reported(unknown)  # Auth() need not log them again


def missing_database(config: Settings) -> str | None:
    """Why a command must not open this database, or None: a SQLite file that does not exist,
    which connecting would create empty (a command run in the wrong folder, or a typo in
    AUTHDB_DATABASE_URL). ``serve`` and ``migrate`` create it; nothing else should."""
    path = sqlite_file_missing(config.database_url)
    if path is None:
        return None
    return (
        f"no authdb database at {path} (AUTHDB_DATABASE_URL); run 'authdb migrate' first "
        "or set AUTHDB_DATABASE_URL"
    )


def existing_database_settings(database_url: str | None = None) -> Settings:
    """The settings, after a one-line error if their SQLite database does not exist yet
    (commands that prompt call this first, so nobody types a password for nothing)."""
    config = settings(database_url)
    missing = missing_database(config)
    if missing:
        fail(missing)
    return config


def run(work: Callable[[Auth], Awaitable[T]], database_url: str | None = None) -> T:
    """Start authdb (checking the schema), run ``work``, and turn any failure into one line.

    A SQLite file that does not exist is refused rather than created (see missing_database),
    and any database must be migrated already: a command never creates or upgrades tables
    (not in another application's SQLite file, not before the operator's backup).
    """
    config = existing_database_settings(database_url)

    async def _main() -> T:
        auth = Auth(config, auto_migrate=False)
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
    except (SchemaOutOfDate, MissingExtra, TemplateProblem) as exc:
        fail(str(exc))
    except (DBAPIError, OSError) as exc:  # not a database, unreachable, refused login ...
        from authdb.cli.summary import describe_database  # summary imports this module

        where = describe_database(config.database_url)
        reason = _first_line(exc.orig if isinstance(exc, DBAPIError) else exc)
        fail(f"cannot use the database ({where}, AUTHDB_DATABASE_URL): {reason}")
    except Exception as exc:
        fail(f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__


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
