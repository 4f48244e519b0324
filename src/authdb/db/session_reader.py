"""The per-request session check, on the cheapest path each backend offers.

Every authenticated request asks "is this session live, and whose is it?". Through the async
ORM that costs more than the rest of the request together (aiosqlite hops to a thread several
times per query; SQLAlchemy's async layer adds greenlet switches), so this one read-only query
runs on the backend's native path: the stdlib ``sqlite3`` driver (a WAL read is microseconds
and never waits for writers) or an ``asyncpg`` pool with a prepared statement.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import JSON, Boolean, Select, bindparam, select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect
from sqlalchemy.engine import URL
from sqlalchemy.orm import make_transient_to_detached

from authdb.db.engine import POOL_TIMEOUT_SECONDS, is_sqlite
from authdb.db.models import AuthSession, User, UTCDateTime
from authdb.db.outage import is_outage


class SessionReader(Protocol):
    async def live_user(self, session_id: int, user_id: int, now: datetime) -> User | None:
        """The user owning live session ``session_id``, or None."""

    async def close(self) -> None: ...


def _query(session_id: Any, user_id: Any, now: Any) -> Select[User]:
    return (
        select(User)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(
            AuthSession.id == session_id,
            User.id == user_id,
            AuthSession.live_at(now),
        )
    )


def _native_statement() -> Select[Any]:
    """The check as plain columns with named parameters, built once so it compiles once."""
    return _query(bindparam("sid"), bindparam("uid"), bindparam("now")).with_only_columns(
        *User.__table__.columns
    )


class SQLiteReader:
    """The stdlib sqlite3 driver, read-only and in autocommit mode, called on the loop itself.

    A WAL read never waits for writers and takes microseconds, which is cheaper than any hop
    to a thread. Each SELECT is its own transaction, so it sees the latest commit.
    """

    def __init__(self, url: URL) -> None:
        self._path = url.database or ":memory:"
        self._connection: sqlite3.Connection | None = None
        compiled = _native_statement().compile(dialect=sqlite_dialect())
        self._sql = str(compiled)
        self._order = list(compiled.positiontup or [])
        self._convert = [_sqlite_converter(column) for column in User.__table__.columns]

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self._path, timeout=5, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA query_only=ON")
            self._connection = connection
        return self._connection

    async def live_user(self, session_id: int, user_id: int, now: datetime) -> User | None:
        params = {"sid": session_id, "uid": user_id, "now": _sqlite_datetime(now)}
        row = self._connect().execute(self._sql, [params[n] for n in self._order]).fetchone()
        if row is None:
            return None
        names = User.__table__.columns.keys()
        return _detached(
            User(**{n: f(v) for n, f, v in zip(names, self._convert, row, strict=True)})
        )

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _sqlite_datetime(value: datetime) -> str:
    # The format SQLAlchemy's SQLite DATETIME type stores (naive UTC), so comparisons agree.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_converter(column: Any) -> Callable[[Any], Any]:
    if isinstance(column.type, UTCDateTime):
        return lambda v: None if v is None else datetime.fromisoformat(v).replace(tzinfo=UTC)
    if isinstance(column.type, Boolean):
        return lambda v: None if v is None else bool(v)
    if isinstance(column.type, JSON):
        return _json_value
    return lambda v: v


def _json_value(value: str | None) -> Any:
    """A JSON column as the ORM reads it: SQLite stores text, and asyncpg hands json and
    jsonb over as text unless a codec is set (one more round trip per new connection)."""
    return None if value is None else json.loads(value)


class AsyncpgReader:
    """A small asyncpg pool; the statement is prepared once per connection by asyncpg.

    ``pool_size`` is this pool's share of ``AUTHDB_DATABASE_POOL_SIZE``. With ``pgbouncer``
    nothing is prepared by name (see authdb.db.engine for why that is safe behind PgBouncer).
    """

    def __init__(self, url: URL, *, pool_size: int = 3, pgbouncer: bool = False) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool_size = pool_size
        self._pgbouncer = pgbouncer
        compiled = _native_statement().compile(dialect=asyncpg_dialect())  # type: ignore[no-untyped-call]
        self._sql = str(compiled)  # "$1"-style, the asyncpg dialect's paramstyle
        self._order = list(compiled.positiontup or [])
        self._json_columns = [c.name for c in User.__table__.columns if isinstance(c.type, JSON)]
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        if self._pool is None:
            import asyncpg  # type: ignore[import-untyped]

            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=min(2, self._pool_size),
                        max_size=self._pool_size,
                        # A server that accepts and never answers is an outage, not a wait.
                        timeout=POOL_TIMEOUT_SECONDS,
                        command_timeout=POOL_TIMEOUT_SECONDS,
                        reset=_keep_as_is,
                        # Unnamed statements only, re-parsed with each Bind, behind PgBouncer.
                        statement_cache_size=0 if self._pgbouncer else 100,
                    )
        return self._pool

    async def live_user(self, session_id: int, user_id: int, now: datetime) -> User | None:
        pool = await self._get_pool()
        params = {"sid": session_id, "uid": user_id, "now": now}
        args = [params[name] for name in self._order]
        try:
            row = await pool.fetchrow(self._sql, *args)
        except Exception as exc:
            # A pooled connection the server has cut (a restart, a terminated backend) fails
            # once; the pool replaces it, so one more try of this read-only SELECT is safe.
            # A server that refuses or does not answer would only fail (or wait) again.
            if not is_outage(exc) or isinstance(exc, TimeoutError | ConnectionRefusedError):
                raise
            row = await pool.fetchrow(self._sql, *args)
        if row is None:
            return None
        values = dict(row)
        for name in self._json_columns:
            values[name] = _json_value(values[name])
        return _detached(User(**values))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _detached(user: User) -> User:
    """Mark a user built from a row as loaded from the database (detached, not new), so that
    an application's ``db.add(Todo(owner=user))`` refers to the row instead of inserting it."""
    make_transient_to_detached(user)
    return user


async def _keep_as_is(_connection: Any) -> None:
    """Skip asyncpg's reset on release (a round trip each time): the pool runs only one
    read-only SELECT outside any transaction, which leaves no state behind to reset."""


def create_reader(url: URL, *, pool_size: int = 3, pgbouncer: bool = False) -> SessionReader:
    """The reader for ``url``'s backend (``async_url`` admits only SQLite and PostgreSQL).

    ``pool_size`` and ``pgbouncer`` apply to PostgreSQL; SQLite's reader holds one connection.
    """
    if is_sqlite(url):
        return SQLiteReader(url)
    return AsyncpgReader(url, pool_size=pool_size, pgbouncer=pgbouncer)
