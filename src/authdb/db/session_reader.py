"""The per-request session check, on the cheapest path each backend offers.

Every authenticated request asks "is this session live, and whose is it?". Through the async
ORM that costs more than the rest of the request together (aiosqlite hops to a thread several
times per query; SQLAlchemy's async layer adds greenlet switches), so this one read-only query
runs on the backend's native path: the stdlib ``sqlite3`` driver (a WAL read is microseconds
and never waits for writers) or an ``asyncpg`` pool with a prepared statement.

The readers here return plain rows (``LiveRow``); ``authdb.db.session_cache`` keeps them per
process and builds the ``User`` each request gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import JSON, Boolean, ColumnElement, Select, bindparam, select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect
from sqlalchemy.engine import URL
from sqlalchemy.orm import configure_mappers, make_transient_to_detached
from sqlalchemy.sql.expression import ClauseElement

from authdb.db.engine import POOL_TIMEOUT_SECONDS
from authdb.db.models import AuthSession, User, UTCDateTime
from authdb.db.pg_transaction import retried_transaction, worth_retrying

USER_COLUMNS: tuple[str, ...] = tuple(User.__table__.columns.keys())
_USER_MANAGER = User.__mapper__.class_manager


# JSON columns (the profile) stay text in a LiveRow: compact while cached, and decoded anew for
# each request, so that no request's change to its user's profile reaches another's.
JSON_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in User.__table__.columns if isinstance(c.type, JSON)
)


@dataclass(frozen=True, slots=True)
class LiveRow:
    """A live session as read: its id and expiry (aware UTC), and its user's column values
    (JSON columns as their text)."""

    session_id: int
    expires_at: datetime
    user: dict[str, Any]

    @property
    def json_chars(self) -> int:
        """Characters of JSON text the row holds: what a large profile costs to keep."""
        texts = (self.user.get(name) for name in JSON_COLUMNS)
        return sum(len(text) for text in texts if isinstance(text, str))

    def new_user(self) -> User:
        """A fresh ``User`` for one request (see ``detached_user``)."""
        return detached_user(self.user)


def detached_user(columns: dict[str, Any]) -> User:
    """A fresh ``User`` from its column values (JSON columns as text), detached: loaded from
    the database, not new, so that an application's ``db.add(Todo(owner=user))`` refers to
    the row."""
    if not _USER_MANAGER.mapper.configured:
        configure_mappers()  # as the first ORM query would (the app's models are in)
    # As the ORM's own loading does: values straight into the instance's dict, no attribute
    # events (a quarter of the constructor's cost, paid on every request).
    user: User = _USER_MANAGER.new_instance()
    values = user.__dict__
    values.update(columns)
    for name in JSON_COLUMNS:
        if isinstance(text := values.get(name), str):
            values[name] = _json_value(text)
    make_transient_to_detached(user)
    return user


class SessionReader(Protocol):
    """The per-request check; ``authdb.db.session_cache.CachedReader`` is the one Core holds."""

    async def live_user(self, session_id: int, user_id: int, now: datetime) -> User | None:
        """The user owning live session ``session_id`` (of user ``user_id``), or None."""

    async def cookie_session(self, cookie_hash: str, now: datetime) -> tuple[User, int] | None:
        """The user and session id of the live browser session with ``cookie_hash``, or None."""

    async def close(self) -> None: ...


class RowReader(Protocol):
    """A backend's native read of one live session."""

    async def bearer_row(self, session_id: int, user_id: int, now: datetime) -> LiveRow | None:
        """Live session ``session_id`` of user ``user_id`` at ``now``, or None."""

    async def cookie_row(self, cookie_hash: str, now: datetime) -> LiveRow | None:
        """The live session whose cookie hashes to ``cookie_hash`` at ``now``, or None."""

    async def close(self) -> None: ...


def _statement(*where: ColumnElement[bool]) -> Select[Any]:
    """Session id and expiry, then every user column, of the live session matching ``where``;
    with named parameters, built once so that it compiles once."""
    return (
        select(AuthSession.id, AuthSession.expires_at, *User.__table__.columns)
        .join(User, AuthSession.user_id == User.id)
        .where(*where, AuthSession.live_at(bindparam("now")))
    )


_BEARER = _statement(AuthSession.id == bindparam("sid"), User.id == bindparam("uid"))
_COOKIE = _statement(AuthSession.cookie_hash == bindparam("cookie"))


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement's SQL for one driver, and its parameters in positional order; ``fixed``
    holds the values of the statement's own literals (a LIMIT, a constant)."""

    sql: str
    order: list[str]
    fixed: dict[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Any) -> Compiled:
        compiled: Any = statement.compile(dialect=dialect)
        fixed = {name: value for name, value in compiled.params.items() if value is not None}
        return cls(str(compiled), list(compiled.positiontup or []), fixed)

    def args(self, **params: Any) -> list[Any]:
        """The positional arguments, given every named parameter."""
        return [params[name] if name in params else self.fixed[name] for name in self.order]


class SQLiteReader:
    """The stdlib sqlite3 driver, read-only and in autocommit mode, called on the loop itself.

    A WAL read never waits for writers and takes microseconds, which is cheaper than any hop
    to a thread. Each SELECT is its own transaction, so it sees the latest commit.
    """

    def __init__(self, url: URL) -> None:
        self._path = url.database or ":memory:"
        self._connection: sqlite3.Connection | None = None
        dialect = sqlite_dialect()
        self._bearer = Compiled.of(_BEARER, dialect)
        self._cookie = Compiled.of(_COOKIE, dialect)

    def connection(self) -> sqlite3.Connection:
        """The reader's own connection (read-only), opened on first use."""
        if self._connection is None:
            self._connection = sqlite_read_only(self._path)
        return self._connection

    async def bearer_row(self, session_id: int, user_id: int, now: datetime) -> LiveRow | None:
        args = self._bearer.args(sid=session_id, uid=user_id, now=sqlite_datetime(now))
        return self._row(self.connection().execute(self._bearer.sql, args).fetchone())

    async def cookie_row(self, cookie_hash: str, now: datetime) -> LiveRow | None:
        args = self._cookie.args(cookie=cookie_hash, now=sqlite_datetime(now))
        return self._row(self.connection().execute(self._cookie.sql, args).fetchone())

    def _row(self, row: Any) -> LiveRow | None:
        if row is None:
            return None
        return LiveRow(row[0], sqlite_read_datetime(row[1]), sqlite_user(row[2:]))

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def sqlite_read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to ``path`` in autocommit mode, usable from the event loop: each
    SELECT is its own transaction and sees the latest commit."""
    connection = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA query_only=ON")
    return connection


def sqlite_user(values: Sequence[Any]) -> dict[str, Any]:
    """A user's column values as SQLite returns them (``USER_COLUMNS`` in order), converted
    as the ORM would (aware datetimes, booleans; JSON kept as text)."""
    return {n: f(v) for n, f, v in zip(USER_COLUMNS, _SQLITE_CONVERTERS, values, strict=True)}


def sqlite_datetime(value: datetime) -> str:
    # The format SQLAlchemy's SQLite DATETIME type stores (naive UTC), so comparisons agree.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_read_datetime(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _sqlite_converter(column: Any) -> Callable[[Any], Any]:
    if isinstance(column.type, UTCDateTime):
        return lambda v: None if v is None else sqlite_read_datetime(v)
    if isinstance(column.type, Boolean):
        return lambda v: None if v is None else bool(v)
    if isinstance(column.type, JSON):
        return lambda v: v  # kept as text: see JSON_COLUMNS
    return lambda v: v


_SQLITE_CONVERTERS = [_sqlite_converter(column) for column in User.__table__.columns]


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
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool_size = pool_size
        self._pgbouncer = pgbouncer
        dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]
        self._bearer = Compiled.of(_BEARER, dialect)  # "$1"-style, asyncpg's paramstyle
        self._cookie = Compiled.of(_COOKIE, dialect)
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        if self._pool is None:
            import asyncpg  # type: ignore[import-untyped]

            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
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

    async def bearer_row(self, session_id: int, user_id: int, now: datetime) -> LiveRow | None:
        return await self._fetch(
            self._bearer.sql, self._bearer.args(sid=session_id, uid=user_id, now=now)
        )

    async def cookie_row(self, cookie_hash: str, now: datetime) -> LiveRow | None:
        return await self._fetch(self._cookie.sql, self._cookie.args(cookie=cookie_hash, now=now))

    async def _fetch(self, sql: str, args: list[Any]) -> LiveRow | None:
        row = await self.fetchrow(sql, args)
        if row is None:
            return None
        values = list(row.values())
        user = dict(zip(USER_COLUMNS, values[2:], strict=True))
        return LiveRow(values[0], values[1], user)

    async def fetchrow(self, sql: str, args: list[Any]) -> Any:
        """One row of a read-only statement (an asyncpg Record), or None."""
        pool = await self._get_pool()
        try:
            return await pool.fetchrow(sql, *args)
        except Exception as exc:
            # A pooled connection the server has cut (a restart, a terminated backend) fails
            # once; the pool replaces it, so one more try of a read-only SELECT is safe.
            # A server that refuses or does not answer would only fail (or wait) again.
            if not worth_retrying(exc):
                raise
            return await pool.fetchrow(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A pooled connection inside a transaction (see :func:`retried_transaction`). The
        pool skips its reset, so a connection left inside a transaction anyway (cancelled
        during the rollback) is closed, never reused."""
        pool = await self._get_pool()

        async def give_back(connection: Any, _sound: bool) -> None:
            await _release(pool, connection)

        async with retried_transaction(pool.acquire, give_back) as connection:
            yield connection

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _keep_as_is(_connection: Any) -> None:
    """Skip asyncpg's reset on release (a round trip each time): the pool runs only one
    read-only SELECT outside any transaction, which leaves no state behind to reset."""


async def _release(pool: Any, connection: Any) -> None:
    """Give ``connection`` back to ``pool``; one still inside a transaction is closed first."""
    try:
        stuck = connection.is_in_transaction()
    except Exception:
        stuck = False  # the pool took it back already, when the server closed it
    if stuck:
        connection.terminate()
    await pool.release(connection)
