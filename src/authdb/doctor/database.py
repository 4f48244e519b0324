"""The database as the doctor sees it: opened read-only, never created or migrated.

A SQLite file that does not exist is reported, not made (an empty file would then look like a
database); an existing one is opened with ``mode=ro``. PostgreSQL is only read from.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import aiosqlite
from sqlalchemy import URL, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from authdb.db import migrate
from authdb.db.engine import async_url, create_engine, is_sqlite, sqlite_path
from authdb.db.models import Meta
from authdb.doctor.findings import (
    TIMEOUT_SECONDS,
    Deployment,
    Verdict,
    error,
    ok,
    reason,
    skip,
    warn,
)
from authdb.extras import MissingExtra
from authdb.settings import Settings

# The clock may drift this far from the database's before the doctor warns, and this far
# before it is an error: past one TOTP step (30 s, the drift authdb.totp allows), codes from a
# correct phone stop matching, and tokens and sessions expire early or late on this host.
CLOCK_WARN_SECONDS = 2.0
CLOCK_ERROR_SECONDS = 30.0
# The row authdb.services.signing_key keeps the generated secret key in.
GENERATED_KEY = "secret_key"
_NOT_CHECKED = "not checked: the database cannot be read"


@dataclass(frozen=True, slots=True)
class Database:
    """The opened database: ``engine`` to read with, or None and the ``problem``.

    ``description`` names it without credentials (``PostgreSQL 15.4 at host:5432/db``);
    ``warning`` is a problem that does not stop reading (a file this user cannot write).
    """

    description: str
    sqlite: bool
    engine: AsyncEngine | None = None
    problem: str | None = None
    warning: str | None = None


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """The database of ``settings``, read-only, disposed of on exit."""
    url = async_url(settings.database_url)
    if is_sqlite(url):
        # Absolute, so the message says where (as every command names it); a ``file:`` URI
        # filename has no path of its own and is shown as written.
        path = sqlite_path(settings.database_url) or Path(url.database or "")
        database = await _open_sqlite(path)
    else:
        database = await _open_postgresql(url, settings.database_pgbouncer)
    try:
        yield database
    finally:
        if database.engine is not None:
            await database.engine.dispose()


async def _open_sqlite(path: Path) -> Database:
    shown = str(path)
    try:
        uri, version, writable = await asyncio.to_thread(_probe_sqlite, path)
    except FileNotFoundError:
        problem = f"SQLite file {shown} does not exist: `authdb migrate` creates it"
        return Database(f"SQLite file {shown}", sqlite=True, problem=problem)
    except sqlite3.Error as exc:
        return Database(f"SQLite file {shown}", sqlite=True, problem=f"{shown}: {exc}")
    engine = create_async_engine(
        "sqlite+aiosqlite://",
        async_creator=lambda: aiosqlite.connect(uri, uri=True, timeout=TIMEOUT_SECONDS),
        poolclass=NullPool,
    )
    warning = None if writable else f"{shown} or its folder is not writable by this user"
    return Database(f"SQLite {version} file {shown}", sqlite=True, engine=engine, warning=warning)


def _probe_sqlite(path: Path) -> tuple[str, str, bool]:
    """The read-only URI of an existing SQLite file, SQLite's version and whether this user
    may write there. FileNotFoundError when there is no such file, sqlite3.Error when it
    cannot be read as a database (checked with sqlite3, so that SQLite's own words say why)."""
    if not path.is_file():
        raise FileNotFoundError(path)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=TIMEOUT_SECONDS)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        connection.close()
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return uri, sqlite3.sqlite_version, writable


async def _open_postgresql(url: URL, pgbouncer: bool) -> Database:
    where = f"{url.host or 'local socket'}:{url.port or 5432}/{url.database or ''}"
    try:
        # The service's own engine (PgBouncer mode included), with a short connect timeout.
        engine = create_engine(
            url.render_as_string(hide_password=False),
            pool_size=2,
            pool_timeout=TIMEOUT_SECONDS,
            pgbouncer=pgbouncer,
        )
    except MissingExtra as exc:
        return Database(f"PostgreSQL at {where}", sqlite=False, problem=str(exc))
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS + 1):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
                version = connection.dialect.server_version_info or ()
    except Exception as exc:
        await engine.dispose()
        return Database(
            f"PostgreSQL at {where}",
            sqlite=False,
            problem=f"{where} (AUTHDB_DATABASE_URL) not reachable: {reason(exc)}",
        )
    shown_version = ".".join(str(part) for part in version)
    return Database(f"PostgreSQL {shown_version} at {where}", sqlite=False, engine=engine)


async def check_database(deployment: Deployment) -> Verdict:
    """Reachable (PostgreSQL) or readable (SQLite); error with the reason otherwise."""
    database = deployment.database
    if database.problem is not None:
        return error(database.problem)
    if database.warning is not None:
        return warn(f"{database.description} readable, but {database.warning}")
    return ok(f"{database.description} {'readable' if database.sqlite else 'reachable'}")


async def check_schema(deployment: Deployment) -> Verdict:
    """At the newest revision this authdb ships; error naming ``authdb migrate`` otherwise."""
    engine = deployment.database.engine
    if engine is None:
        return skip(_NOT_CHECKED)
    head = migrate.head_revision()
    current = await migrate.current_revision(engine)
    if current == head:
        return ok(f"up to date (revision {head})")
    if current is None:
        try:
            legacy = await migrate.legacy_revision(engine)
        except migrate.LegacyRevisionError as exc:  # what `authdb migrate` would stop with
            return error(str(exc))
        if legacy is not None:  # an earlier authdb kept its revision in alembic_version
            return error(f"at revision {legacy}, this authdb needs {head}: run `authdb migrate`")
        return error("no authdb tables yet: run `authdb migrate`")
    return error(f"at revision {current}, this authdb needs {head}: run `authdb migrate`")


async def check_clock(deployment: Deployment) -> Verdict:
    """This host's clock against the database's: warn past 2 s, error past 30 s."""
    database = deployment.database
    if database.engine is None:
        return skip(_NOT_CHECKED)
    if database.sqlite:
        return ok("SQLite runs on this host's clock")
    async with database.engine.connect() as connection:
        before = deployment.clock()
        theirs: datetime = await connection.scalar(text("SELECT clock_timestamp()"))
        after = deployment.clock()
    ours = before + (after - before) / 2
    offset = (ours - theirs).total_seconds()
    way = "ahead of" if offset > 0 else "behind"
    shown = f"this host's clock is {abs(offset):.1f} s {way} the database's"
    if abs(offset) > CLOCK_ERROR_SECONDS:
        return error(f"{shown}: tokens, sessions and TOTP codes go wrong; synchronise with NTP")
    if abs(offset) > CLOCK_WARN_SECONDS:
        return warn(f"{shown}; synchronise with NTP")
    return ok(f"within {CLOCK_WARN_SECONDS:g} s of the database's ({abs(offset):.1f} s apart)")


async def has_generated_key(database: Database) -> bool | None:
    """Whether the database holds a generated secret key; None when it cannot be read."""
    if database.engine is None:
        return None
    try:
        async with database.engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(Meta).where(Meta.key == GENERATED_KEY)
            )
    except Exception:
        return None  # no schema yet: the schema check says so
    return bool(count)
