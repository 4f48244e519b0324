"""The async engine: driver selection, connection budget, PgBouncer mode and SQLite tuning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from authdb.extras import require_postgres

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def async_url(database_url: str) -> URL:
    """Parse a URL, swapping a sync driver for its async twin.

    The tutorial handed ``sqlite:///...`` to an async engine; we accept it and use aiosqlite.
    """
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    backend = url.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {backend!r}: use SQLite or PostgreSQL")
    return url.set(drivername=_ASYNC_DRIVERS[backend])


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_path(database_url: str) -> Path | None:
    """The absolute path of a SQLite database's file (a relative one is from the current
    directory, as SQLite opens it); None for PostgreSQL or a ``file:`` URI filename."""
    url = async_url(database_url)
    if not is_sqlite(url) or not url.database or url.database.startswith("file:"):
        return None
    return Path(url.database).resolve()


def sqlite_file_missing(database_url: str) -> Path | None:
    """The path of a SQLite database whose file does not exist yet, which connecting would
    create empty; None when the file exists or the database is not a SQLite file."""
    path = sqlite_path(database_url)
    return path if path is not None and not path.exists() else None


# How long a request waits for a pooled connection; past it the pool raises TimeoutError, which
# authdb.db.outage classifies and the HTTP layer answers with 503 rather than keep the client
# waiting on a database that is not keeping up.
POOL_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class PoolBudget:
    """How the ``AUTHDB_DATABASE_POOL_SIZE`` connections of one process are shared.

    ``engine`` is SQLAlchemy's pool (every transaction), ``reader`` the per-request session
    check's (see authdb.db.session_reader), ``listener`` the session cache's LISTEN connection
    (0 or 1, see authdb.db.session_cache), ``sign_in`` the password sign-in's own connection
    (0 or 1, see authdb.db.sign_in_store). Neither pool grows past its share: no overflow.
    """

    engine: int
    reader: int
    listener: int = 0
    sign_in: int = 0

    @classmethod
    def split(cls, total: int, *, sqlite: bool = False, listener: bool = False) -> PoolBudget:
        """Share ``total`` (at least 2, or 3 with a ``listener``) between the connections.

        On PostgreSQL the session check gets a third (at least one): its query is one indexed
        read, far shorter than the ORM's transactions. Password sign-ins get a connection of
        their own when the engine keeps at least two; else they share the session check's.
        On SQLite the session check holds a single connection (sign-ins open their own file
        connection, outside this budget).
        Raises ValueError when ``total`` is too small.
        """
        listening = 1 if listener else 0
        if total < 2 + listening:
            raise ValueError(f"the database pool needs at least {2 + listening} connections")
        reader = 1 if sqlite else max(1, (total - listening) // 3)
        rest = total - reader - listening
        sign_in = 1 if not sqlite and rest >= 3 else 0
        return cls(engine=rest - sign_in, reader=reader, listener=listening, sign_in=sign_in)


def create_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    pool_timeout: float = POOL_TIMEOUT_SECONDS,
    pgbouncer: bool = False,
) -> AsyncEngine:
    """An engine for ``database_url`` holding at most ``pool_size`` connections.

    SQLite gets WAL, foreign keys and immediate writes. ``pgbouncer`` keeps no server-side
    prepared statement across transactions (PgBouncer in transaction-pooling mode may hand the
    next transaction another server connection).
    """
    url = async_url(database_url)
    if not is_sqlite(url):
        require_postgres()  # a clear MissingExtra now, not SQLAlchemy's bare ImportError
    bounded: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 0,
        "pool_timeout": pool_timeout,
    }
    if not is_sqlite(url):
        # A server that accepts but never answers must not hold a request for asyncpg's 60 s.
        connect_args: dict[str, Any] = {"timeout": pool_timeout}
        if pgbouncer:
            connect_args.update(_PGBOUNCER_CONNECT_ARGS)
        return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args, **bounded)
    engine = create_async_engine(url, connect_args={"timeout": 30}, **bounded)
    _tune_sqlite(engine)
    return engine


def _unnamed_statement() -> str:
    return ""


# No statement cache in asyncpg or in SQLAlchemy's adapter, so nothing prepared in one
# transaction is looked for in the next (see "Prepared Statement Name with PGBouncer" in
# SQLAlchemy's asyncpg dialect documentation). And no names at all: asyncpg then uses the
# unnamed statement, which the next Parse replaces, so none is left behind on PgBouncer's server
# connections (unique names would pile up there), and with its cache off asyncpg sends the Parse
# again with the Bind, in one round trip, so no Sync can separate them.
_PGBOUNCER_CONNECT_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": _unnamed_statement,
}


def _tune_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so that BEGIN IMMEDIATE below applies.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that later writes can fail at once with "database is locked"
        # instead of waiting; taking the write lock up front makes writers queue politely.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
