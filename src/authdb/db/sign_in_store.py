"""A password sign-in's reads and its write, on each backend's native path.

A sign-in through the ORM costs about 40 round trips between the event loop and the driver
(on SQLite, each a hop to aiosqlite's thread), and under a flood of other requests every one
of them waits its turn on the loop. The common case, a right password opening a session, is
therefore done here in few statements, compiled once from SQLAlchemy Core:

* ``subject``: the user a login name names and the lock standing on its counter, in one
  SELECT, whether or not the name matches anyone (so neither case takes more steps);
* ``commit``: in one transaction, forgive the counter's unlocked failures, refuse if a lock
  stands, stamp ``last_login_at``, insert the session, its refresh token and the audit rows
  chained to the trail's head.

On SQLite the read runs on the loop (a WAL read never waits for writers) and the write on one
connection in one call to a worker thread. On PostgreSQL the read uses asyncpg on the session
check's pool, and the write a connection of its own on an event loop of its own, in a thread
(authdb.db.loop_thread), so that its round trips never wait behind other requests; when
``AUTHDB_DATABASE_POOL_SIZE`` is too small to spare that connection, the write borrows the
session check's pool on the application's loop. Everything rarer (MFA, a rehash, a refusal,
a lock) stays in the ORM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import String, bindparam, case, cast, delete, insert, literal, or_, select, update
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect
from sqlalchemy.engine import URL

from authdb.db.engine import POOL_TIMEOUT_SECONDS
from authdb.db.loop_thread import LoopThread
from authdb.db.models import AuditEvent, AuthSession, LoginFailure, RefreshToken, User
from authdb.db.pg_transaction import retried_transaction
from authdb.db.session_reader import (
    USER_COLUMNS,
    AsyncpgReader,
    Compiled,
    RowReader,
    sqlite_datetime,
    sqlite_read_datetime,
    sqlite_read_only,
    sqlite_user,
)

# The audit chain's advisory lock on PostgreSQL (an arbitrary 64-bit constant, distinct from the
# signing keys'): every audited transaction takes it (see authdb.services.audit_chain).
AUDIT_CHAIN_LOCK = 0x61756469745F6368  # "audit_ch"


@dataclass(frozen=True, slots=True)
class Subject:
    """What a login name names: the user's column values (JSON columns as text), or None;
    and when the lock on its counter ends (aware UTC), or None when none was ever set."""

    user: dict[str, Any] | None
    locked_until: datetime | None


@dataclass(frozen=True, slots=True)
class NewSession:
    """The rows a successful sign-in writes. ``now`` is aware UTC; ``cookie_hash`` is set for a
    browser session, ``refresh_hash`` for an API one."""

    user_id: int
    lock_key: str
    now: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None
    cookie_hash: str | None = None
    refresh_hash: str | None = None


# Given the new session's id and the trail's head (chain_seq, row_hash; 0 and None when the
# trail is empty), the audit rows to insert: AuditEvent's columns, ``detail`` JSON-able. Called
# inside the transaction, on the thread that writes (the sign-in's own, unless PostgreSQL
# borrows the session check's pool): an exception it raises undoes it.
AuditRows = Callable[[int, int, str | None], list[dict[str, Any]]]
# The new session's id; "locked" when a lock stands on the counter; "gone" when the user's row
# was deleted meanwhile. Nothing is written unless a session id is returned.
Outcome = int | Literal["locked", "gone"]


class SignInStore(Protocol):
    async def subject(self, login_key: str, name_key: str, now: datetime) -> Subject:
        """The user whose username (else email) key is ``login_key``, and the lock on their
        counter (``user:<id>``), or on ``name_key`` when nobody has that name."""

    async def commit(self, new: NewSession, audit_rows: AuditRows) -> Outcome:
        """Open the session in one transaction (see the module's docstring)."""

    async def close(self) -> None: ...


# --- the statements, compiled once per dialect ----------------------------------------------------


def _subject_statement() -> Any:
    key: Any = bindparam("key")
    match = (
        select(User.id)
        .where(or_(User.username_key == key, User.email_key == key))
        .order_by(case((User.username_key == key, 0), else_=1))  # a username wins
        .limit(1)
        .scalar_subquery()
    )
    one = select(literal(1).label("one")).subquery("one")
    counter = case(
        (User.id.is_(None), bindparam("name_key")),
        else_=literal("user:", String) + cast(User.id, String),
    )
    return (
        select(LoginFailure.locked_until, *User.__table__.columns)
        .select_from(one)
        .outerjoin(User, User.id == match)
        .outerjoin(LoginFailure, LoginFailure.key == counter)
    )


# The columns of a new audit row (``id`` is the database's).
_AUDIT = (
    "created_at", "event", "user_id", "actor_id", "ip_address", "user_agent", "detail",
    "chain_seq", "prev_hash", "row_hash",
)  # fmt: skip
_NOW = bindparam("now", type_=LoginFailure.locked_until.type)
_UNLOCKED = LoginFailure.locked_until.is_(None) | (LoginFailure.locked_until <= _NOW)
_STATEMENTS: dict[str, Any] = {
    "subject": _subject_statement(),
    "forgive": delete(LoginFailure).where(LoginFailure.key == bindparam("key"), _UNLOCKED),
    "lock": select(LoginFailure.locked_until).where(
        LoginFailure.key == bindparam("key"), LoginFailure.locked_until > _NOW
    ),
    "stamp": update(User)
    .where(User.id == bindparam("uid"))
    .values(last_login_at=_NOW, updated_at=_NOW),
    "session": insert(AuthSession).values(
        user_id=bindparam("uid"),
        created_at=_NOW,
        last_used_at=_NOW,
        expires_at=bindparam("expires_at", type_=AuthSession.expires_at.type),
        user_agent=bindparam("user_agent", type_=String),
        ip_address=bindparam("ip_address", type_=String),
        cookie_hash=bindparam("cookie_hash", type_=String),
    ),
    # inline(): no RETURNING of the new ids, which nothing reads.
    "refresh": insert(RefreshToken)
    .values(session_id=bindparam("sid"), token_hash=bindparam("token_hash"), created_at=_NOW)
    .inline(),
    "head": select(AuditEvent.chain_seq, AuditEvent.row_hash)
    .order_by(AuditEvent.chain_seq.desc())
    .limit(1),
    "audit": insert(AuditEvent)
    .values({name: bindparam(name, type_=AuditEvent.__table__.c[name].type) for name in _AUDIT})
    .inline(),
}


def _compile(dialect: Any) -> dict[str, Compiled]:
    return {name: Compiled.of(statement, dialect) for name, statement in _STATEMENTS.items()}


def _session_args(new: NewSession, at: Callable[[datetime], Any]) -> dict[str, Any]:
    return {
        "uid": new.user_id,
        "now": at(new.now),
        "expires_at": at(new.expires_at),
        "user_agent": new.user_agent,
        "ip_address": new.ip_address,
        "cookie_hash": new.cookie_hash,
    }


def _audit_args(row: dict[str, Any], at: Callable[[datetime], Any]) -> dict[str, Any]:
    detail = row["detail"]
    return {
        **row,
        "created_at": at(row["created_at"]),
        "detail": None if detail is None else json.dumps(detail),
    }


# --- SQLite ---------------------------------------------------------------------------------------


class SQLiteSignIn:
    """Reads on the loop (a read-only autocommit connection, as the session check's), writes
    on a connection of their own in one worker thread: one hop per sign-in."""

    def __init__(self, url: URL) -> None:
        self._path = url.database or ":memory:"
        self._sql = _compile(sqlite_dialect())
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = sqlite_read_only(self._path)
        return self._reader

    async def subject(self, login_key: str, name_key: str, now: datetime) -> Subject:
        sql = self._sql["subject"]
        row = self._read_connection().execute(sql.sql, sql.args(key=login_key, name_key=name_key))
        values = row.fetchone()
        locked_until = None if values[0] is None else sqlite_read_datetime(values[0])
        return Subject(None if values[1] is None else sqlite_user(values[1:]), locked_until)

    async def commit(self, new: NewSession, audit_rows: AuditRows) -> Outcome:
        if self._thread is None:  # (again, after close: an Auth may be started anew)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="authdb-sign-in")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._write, new, audit_rows)

    def _write_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            # As authdb.db.engine tunes the engine's connections.
            connection = sqlite3.connect(
                self._path, timeout=30, isolation_level=None, check_same_thread=False
            )
            for pragma in ("foreign_keys=ON", "busy_timeout=30000", "synchronous=NORMAL"):
                connection.execute(f"PRAGMA {pragma}")
            self._writer = connection
        return self._writer

    def _write(self, new: NewSession, audit_rows: AuditRows) -> Outcome:
        connection = self._write_connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            outcome = self._statements(connection, new, audit_rows)
        except BaseException:
            if connection.in_transaction:  # some errors (a full disk) end it themselves
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT" if isinstance(outcome, int) else "ROLLBACK")
        return outcome

    def _statements(
        self, connection: sqlite3.Connection, new: NewSession, audit_rows: AuditRows
    ) -> Outcome:
        sql, at = self._sql, sqlite_datetime
        args = _session_args(new, at)

        def run(name: str, **params: Any) -> sqlite3.Cursor:
            return connection.execute(sql[name].sql, sql[name].args(**params))

        run("forgive", key=new.lock_key, now=args["now"])
        if run("lock", key=new.lock_key, now=args["now"]).fetchone() is not None:
            return "locked"
        if run("stamp", uid=new.user_id, now=args["now"]).rowcount == 0:
            return "gone"
        session_id = run("session", **args).lastrowid
        assert session_id is not None
        if new.refresh_hash is not None:
            run("refresh", sid=session_id, token_hash=new.refresh_hash, now=args["now"])
        head = run("head").fetchone()
        rows = audit_rows(session_id, *(head or (0, None)))
        audit = sql["audit"]
        connection.executemany(audit.sql, [audit.args(**_audit_args(r, at)) for r in rows])
        return session_id

    async def close(self) -> None:
        # The writer is closed by its own thread, after any write still in flight.
        if self._thread is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._close_writer)
            self._thread.shutdown(wait=False)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --- PostgreSQL -----------------------------------------------------------------------------------


class AsyncpgSignIn:
    """asyncpg, with no SQLAlchemy pool checkout and no pre-ping: the read on the session
    check's pool (authdb.db.session_reader.AsyncpgReader), the write on ``writer`` when given,
    else on that pool too. After the BEGIN, one DELETE forgives the counter and one statement
    does the rest of the sign-in up to the audit chain's lock (``_OPEN``); then the chain's
    head, its rows and the COMMIT: six round trips for the write, one for the read."""

    def __init__(self, reader: AsyncpgReader, writer: AsyncpgWriter | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._sql = _compile(asyncpg_dialect())  # type: ignore[no-untyped-call]

    async def subject(self, login_key: str, name_key: str, now: datetime) -> Subject:
        sql = self._sql["subject"]
        values = list(
            (
                await self._reader.fetchrow(sql.sql, sql.args(key=login_key, name_key=name_key))
            ).values()
        )
        if values[1] is None:
            return Subject(None, values[0])
        return Subject(dict(zip(USER_COLUMNS, values[1:], strict=True)), values[0])

    async def commit(self, new: NewSession, audit_rows: AuditRows) -> Outcome:
        writer = self._writer
        if writer is None:
            return await self._commit(self._reader.transaction, new, audit_rows)
        return await writer.run(lambda: self._commit(writer.transaction, new, audit_rows))

    async def _commit(
        self, transaction: Transaction, new: NewSession, audit_rows: AuditRows
    ) -> Outcome:
        try:
            async with transaction() as connection:
                outcome = await self._statements(connection, new, audit_rows)
                if not isinstance(outcome, int):
                    raise _Undo(outcome)
        except _Undo as undone:
            return undone.outcome
        return outcome

    async def _statements(self, raw: Any, new: NewSession, audit_rows: AuditRows) -> Outcome:
        sql, now = self._sql, new.now
        # Its own statement first: the lock is then read in a snapshot taken after the DELETE
        # waited for any failure being counted concurrently (READ COMMITTED).
        await raw.execute(sql["forgive"].sql, *sql["forgive"].args(key=new.lock_key, now=now))
        opened = await raw.fetchrow(
            _OPEN,
            new.lock_key,
            now,
            new.user_id,
            new.expires_at,
            new.user_agent,
            new.ip_address,
            new.cookie_hash,
            new.refresh_hash,
            AUDIT_CHAIN_LOCK,
        )
        session_id, locked = opened["session_id"], opened["locked"]
        if session_id is None:
            return "locked" if locked else "gone"
        # ``_OPEN`` took the chain's lock. The head is read by a statement of its own, so that
        # it sees what the lock's previous holder committed (READ COMMITTED).
        head = await raw.fetchrow(sql["head"].sql, *sql["head"].args())
        rows = audit_rows(session_id, *(tuple(head.values()) if head else (0, None)))
        audit = sql["audit"]
        await raw.executemany(audit.sql, [audit.args(**_audit_args(r, lambda m: m)) for r in rows])
        return int(session_id)

    async def close(self) -> None:
        # The pool is the session check's to close.
        if self._writer is not None:
            await self._writer.close()


# Opens a transaction on a connection: ``async with transaction() as connection``.
Transaction = Callable[[], AbstractAsyncContextManager[Any]]


class AsyncpgWriter:
    """One asyncpg connection of the sign-in's own, used only on its own event loop (a
    :class:`~authdb.db.loop_thread.LoopThread`), one transaction at a time.

    Sign-ins are serialized by the audit chain's lock anyway, so one connection per process
    does not hold them back. A connection the server has cut is replaced: at once when BEGIN
    fails on it, else at the next sign-in. Errors are asyncpg's (outages answer 503).
    """

    def __init__(self, dsn: str, *, pgbouncer: bool = False) -> None:
        self._dsn = dsn
        self._pgbouncer = pgbouncer
        self._thread = LoopThread("authdb-sign-in")
        self._connection: Any = None
        self._lock: asyncio.Lock | None = None  # made on the private loop, when first used

    async def run(self, work: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """``await work()`` on the private loop (see LoopThread.run)."""
        return await self._thread.run(work)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """The connection inside a transaction (see :func:`retried_transaction`); one that
        is not sound afterwards is closed, to be replaced at the next sign-in. Only on the
        private loop (inside :meth:`run`)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock, retried_transaction(self._connect, self._give_back) as connection:
            yield connection

    async def _give_back(self, _connection: Any, sound: bool) -> None:
        if not sound:
            await self._drop()

    async def _connect(self) -> Any:
        if self._connection is None or self._connection.is_closed():
            import asyncpg  # type: ignore[import-untyped]

            self._connection = await asyncpg.connect(
                self._dsn,
                # A server that accepts and never answers is an outage, not a wait.
                timeout=POOL_TIMEOUT_SECONDS,
                command_timeout=POOL_TIMEOUT_SECONDS,
                # Unnamed statements only, re-parsed with each Bind, behind PgBouncer.
                statement_cache_size=0 if self._pgbouncer else 100,
            )
        return self._connection

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or connection.is_closed():
            return
        try:
            await asyncio.wait_for(connection.close(), POOL_TIMEOUT_SECONDS)
        except Exception:
            connection.terminate()  # a close that cannot end cleanly: drop the socket

    async def close(self) -> None:
        """Close the connection after any sign-in in flight, and end the thread."""

        async def last() -> None:
            if self._lock is None:
                await self._drop()
                return
            async with self._lock:
                await self._drop()

        await self._thread.stop(last)
        self._lock = None  # it belongs to the loop that ended


# Refuse if a lock stands; else stamp the user, open the session, store its refresh token
# (when there is one) and take the audit chain's lock. Nothing is written, and the lock is not
# taken, for a user deleted meanwhile. Each sub-statement depends on the one before through its
# RETURNING, so the chain's lock comes after the user's row lock (the stamp), as
# authdb.services.audit_chain takes it after a transaction's row locks: the same lock order on
# both paths. ``chained`` calls a volatile function, so it is never inlined and always runs.
_OPEN = """
WITH locked AS (
    SELECT 1 FROM login_failures WHERE key = $1::varchar AND locked_until > $2::timestamptz
), stamped AS (
    UPDATE users SET last_login_at = $2::timestamptz, updated_at = $2::timestamptz
    WHERE id = $3::bigint AND NOT EXISTS (SELECT 1 FROM locked)
    RETURNING id
), opened AS (
    INSERT INTO auth_sessions
        (user_id, created_at, last_used_at, expires_at, user_agent, ip_address, cookie_hash)
    SELECT id, $2::timestamptz, $2::timestamptz, $4::timestamptz, $5::varchar, $6::varchar,
        $7::varchar
    FROM stamped
    RETURNING id
), refreshed AS (
    INSERT INTO refresh_tokens (session_id, token_hash, created_at)
    SELECT id, $8::varchar, $2::timestamptz FROM opened WHERE $8::varchar IS NOT NULL
), chained AS (
    SELECT pg_advisory_xact_lock($9::bigint) FROM opened
)
SELECT (SELECT id FROM opened) AS session_id, EXISTS (SELECT 1 FROM locked) AS locked,
    EXISTS (SELECT 1 FROM chained) AS chained
"""


class _Undo(Exception):
    """Rolls the transaction back while carrying the outcome out of it."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def create_sign_in_store(
    url: URL, reader: RowReader, *, own_connection: bool = False, pgbouncer: bool = False
) -> SignInStore:
    """The native sign-in path for ``url``'s database. On PostgreSQL ``reader`` (the session
    check's AsyncpgReader) lends its pool to the read, and to the write unless
    ``own_connection`` (one more connection, see authdb.db.engine.PoolBudget)."""
    if isinstance(reader, AsyncpgReader):
        writer = AsyncpgWriter(reader.dsn, pgbouncer=pgbouncer) if own_connection else None
        return AsyncpgSignIn(reader, writer)
    return SQLiteSignIn(url)
