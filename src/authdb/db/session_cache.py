"""A per-process cache of live sessions, emptied across processes when a session or user changes.

Every authenticated request asks "is this session live, and whose is it?". Most of the time
the answer has not changed since the last request, so each process keeps the answers it read
(``SessionCache``, a bounded LRU) and learns about changes from the database itself:

* **Triggers** (migration 0010) catch every change that can alter an answer, whoever writes it
  (any authdb process, the CLI, an operator's SQL): a user updated or deleted, a session
  revoked, re-dated or deleted while live.
* **SQLite** (``SQLiteFeed``): the triggers append the user's id to ``auth_changes``. Before
  every use of the cache, ``PRAGMA data_version`` (no I/O when nothing was committed) tells
  whether any other connection committed; if so the new rows of ``auth_changes`` name the
  users whose entries to drop. A change is seen by the very next request, in every process.
* **PostgreSQL** (``PostgresFeed``): the triggers ``NOTIFY authdb_auth_changes`` with the
  user's id, delivered at commit to one listening connection per process. The cache is used
  only while that connection is up (checked every ``PING_SECONDS``); when it drops, the cache
  is emptied and bypassed until it is back.
* In the process that made a change, the commit itself empties the cache (``watch_commits``),
  so revocation is immediate there without waiting for the notification.

No entry is used after ``MAX_AGE_SECONDS``, nor past its session's expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import event, inspect
from sqlalchemy.engine import URL
from sqlalchemy.orm import InstanceState, Session, UOWTransaction

from authdb.db.engine import is_sqlite
from authdb.db.models import AuthSession, User
from authdb.db.session_reader import AsyncpgReader, LiveRow, RowReader, SQLiteReader
from authdb.settings import Settings

log = logging.getLogger("authdb.sessions")

# The NOTIFY channel of migration 0010's PostgreSQL triggers (payload: the user's id).
CHANNEL = "authdb_auth_changes"
# The backstop: however it was learned, no answer older than this is reused.
MAX_AGE_SECONDS = 60.0
# Users whose JSON columns (the profile) are longer than this are not kept: with the default
# size, the cache then holds at most about 10,000 x (4 KiB + 1.5 KB).
MAX_JSON_CHARS = 4096
# How often the PostgreSQL listener proves its connection alive (a silently dead one stops
# the cache within about this long plus PING_TIMEOUT_SECONDS).
PING_SECONDS = 5.0
PING_TIMEOUT_SECONDS = 2.0
RECONNECT_SECONDS = 1.0
# Where a sessionmaker's sessions find the cache to empty on commit (see watch_commits).
CACHE_INFO_KEY = "authdb_session_cache"
_CHANGED_KEY = "authdb_auth_changed"


@dataclass(frozen=True, slots=True)
class _Entry:
    user_id: int
    row: LiveRow
    stored: float  # time.monotonic()


class SessionCache:
    """At most ``size`` live sessions, least recently used dropped first.

    Keys are a bearer session's id (int) or a browser session's cookie hash (str).
    ``generation`` moves on every drop, so that an answer read before a drop is not stored
    after it (``put`` with the generation seen before the read).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.generation = 0
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._by_user: dict[int, set[Hashable]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: datetime) -> LiveRow | None:
        """The cached row for ``key`` if still live at ``now`` and young enough, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.row.expires_at <= now or time.monotonic() - entry.stored > MAX_AGE_SECONDS:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry.row

    def put(self, key: Hashable, row: LiveRow, generation: int) -> None:
        """Keep ``row`` under ``key``, unless anything was dropped since ``generation`` or its
        profile is over ``MAX_JSON_CHARS`` (such a user is read on each request instead)."""
        if generation != self.generation or self.size == 0 or row.json_chars > MAX_JSON_CHARS:
            return
        user_id = int(row.user["id"])
        row = self._shared(user_id, row)
        self._remove(key)
        self._entries[key] = _Entry(user_id, row, time.monotonic())
        self._by_user.setdefault(user_id, set()).add(key)
        while len(self._entries) > self.size:
            self._remove(next(iter(self._entries)))

    def _shared(self, user_id: int, row: LiveRow) -> LiveRow:
        """``row``, holding the very values another of the user's sessions holds if equal: a
        user with many sessions is kept once."""
        for key in self._by_user.get(user_id, ()):
            cached = self._entries[key].row.user
            if cached == row.user:
                return LiveRow(row.session_id, row.expires_at, cached)
            break
        return row

    def forget_user(self, user_id: int) -> None:
        """Drop every entry of ``user_id`` (a change to the user or one of their sessions)."""
        self.generation += 1
        for key in self._by_user.pop(user_id, ()):
            self._entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_user.clear()

    def _remove(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._by_user.get(entry.user_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[entry.user_id]


class ChangeFeed(Protocol):
    """What tells a process's cache about changes made elsewhere."""

    async def ready(self) -> bool:
        """Bring the cache up to date; False when it must not be used now."""

    async def close(self) -> None: ...


class SQLiteFeed:
    """``auth_changes`` rows read whenever ``PRAGMA data_version`` says another connection
    committed (the reader's connection never writes, so every commit counts)."""

    def __init__(self, reader: SQLiteReader, cache: SessionCache) -> None:
        self._reader = reader
        self._cache = cache
        self._version: int | None = None
        self._last_id: int | None = None

    async def ready(self) -> bool:
        connection = self._reader.connection()
        version = connection.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return True
        # The version is read first: a commit landing after it is seen by the next request.
        if self._last_id is None:
            self._last_id = self._handed_out(connection)
            self._cache.clear()
        else:
            rows = connection.execute(
                "SELECT id, user_id FROM auth_changes WHERE id > ? ORDER BY id", (self._last_id,)
            ).fetchall()
            # Ids are handed out in commit order without holes (AUTOINCREMENT, one writer at a
            # time): a first id past the next one, or none left of those handed out, means rows
            # were pruned before this process read them. Then start afresh.
            # And a last id below the one seen means the file was restored from a backup.
            newest = rows[-1][0] if rows else self._handed_out(connection)
            first = rows[0][0] if rows else newest + 1
            if newest < self._last_id or (newest > self._last_id and first > self._last_id + 1):
                self._cache.clear()
            for _id, user_id in rows:
                self._cache.forget_user(user_id)
            self._last_id = newest
        self._version = version
        return True

    @staticmethod
    def _handed_out(connection: Any) -> int:
        """The last id AUTOINCREMENT handed out in ``auth_changes`` (0: none yet)."""
        row = connection.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'auth_changes'"
        ).fetchone()
        return 0 if row is None else int(row[0])

    async def close(self) -> None:
        self._version = None


class PostgresFeed:
    """One ``LISTEN authdb_auth_changes`` connection per process (outside the pools' budget
    share of the readers, inside ``AUTHDB_DATABASE_POOL_SIZE``)."""

    def __init__(self, dsn: str, cache: SessionCache) -> None:
        self._dsn = dsn
        self._cache = cache
        self._task: asyncio.Task[None] | None = None
        self._up = False

    async def ready(self) -> bool:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())
        return self._up

    async def _listen(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        while True:
            connection: Any = None
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self._dsn, timeout=PING_TIMEOUT_SECONDS * 5)
                # A connection the server ends (restart, failover, a terminated backend) stops
                # the cache at once, not at the next ping.
                connection.add_termination_listener(functools.partial(self._lost, lost))
                await connection.add_listener(CHANNEL, self._notified)
                self._cache.clear()  # whatever happened while nobody listened
                self._up = not connection.is_closed()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), PING_SECONDS)
                    if not lost.is_set():
                        await connection.fetchval("SELECT 1", timeout=PING_TIMEOUT_SECONDS)
                raise ConnectionError("the server ended the connection")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: not listening
                if self._up:
                    log.warning("session cache off: change listener lost (%s)", type(exc).__name__)
            finally:
                self._down()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), PING_TIMEOUT_SECONDS)
            await asyncio.sleep(RECONNECT_SECONDS)

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            self._cache.forget_user(int(payload))
        except ValueError:
            self._cache.clear()

    def _lost(self, lost: asyncio.Event, _connection: Any) -> None:
        self._down()
        lost.set()

    def _down(self) -> None:
        self._up = False
        self._cache.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


class CachedReader:
    """The ``SessionReader`` Core holds: ``reader``'s answers kept in ``cache`` while ``feed``
    (None: no caching) says they are current."""

    def __init__(self, reader: RowReader, cache: SessionCache, feed: ChangeFeed | None) -> None:
        self.reader = reader
        self.cache = cache
        self._feed = feed

    async def live_user(self, session_id: int, user_id: int, now: datetime) -> User | None:
        cached = await self._current()
        if cached:
            row = self.cache.get(session_id, now)
            if row is not None and row.user["id"] == user_id:
                return row.new_user()
        generation = self.cache.generation
        row = await self.reader.bearer_row(session_id, user_id, now)
        if row is None:
            return None
        if cached:
            self.cache.put(session_id, row, generation)
        return row.new_user()

    async def cookie_session(self, cookie_hash: str, now: datetime) -> tuple[User, int] | None:
        cached = await self._current()
        row = self.cache.get(cookie_hash, now) if cached else None
        if row is None:
            generation = self.cache.generation
            row = await self.reader.cookie_row(cookie_hash, now)
            if row is None:
                return None
            if cached:
                self.cache.put(cookie_hash, row, generation)
        return row.new_user(), row.session_id

    async def _current(self) -> bool:
        return self._feed is not None and self.cache.size > 0 and await self._feed.ready()

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.close()
        await self.reader.close()
        self.cache.clear()


# --- this process's own commits ----------------------------------------------------------------

# Columns whose change cannot alter an answer the cache gives: a login's stamp and a refresh's
# bookkeeping. Any other change to a user or a session empties the cache at commit.
_NOT_ANSWERS = {
    "users": {"last_login_at", "updated_at"},
    "auth_sessions": {"last_used_at", "ip_address"},
}


@event.listens_for(Session, "do_orm_execute")
def _on_statement(state: Any) -> None:
    if CACHE_INFO_KEY not in state.session.info or not (state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    name = getattr(table, "name", None)
    if name not in _NOT_ANSWERS:
        return
    values = {getattr(c, "key", str(c)) for c in getattr(state.statement, "_values", None) or {}}
    # Values given another way (parameter sets, ordered values) count as a change.
    if state.is_delete or not values or not values <= _NOT_ANSWERS[name]:
        state.session.info[_CHANGED_KEY] = True


@event.listens_for(Session, "before_flush")
def _on_flush(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    if CACHE_INFO_KEY not in session.info:
        return
    if any(isinstance(o, User | AuthSession) for o in session.deleted) or any(
        _changes_answer(o) for o in session.dirty if isinstance(o, User | AuthSession)
    ):
        session.info[_CHANGED_KEY] = True


def _changes_answer(row: User | AuthSession) -> bool:
    ignored = _NOT_ANSWERS[row.__tablename__]
    state: InstanceState[Any] = inspect(row)
    return any(
        state.attrs[prop.key].history.has_changes()
        for prop in state.mapper.column_attrs
        if prop.key not in ignored
    )


@event.listens_for(Session, "after_commit")
def _on_commit(session: Session) -> None:
    if session.info.pop(_CHANGED_KEY, False):
        cache = session.info.get(CACHE_INFO_KEY)
        if isinstance(cache, SessionCache):
            cache.clear()


@event.listens_for(Session, "after_soft_rollback")
def _on_rollback(session: Session, _previous: object) -> None:
    session.info.pop(_CHANGED_KEY, None)


def watch_commits(sessionmaker: Any, cache: SessionCache) -> None:
    """Make the sessions of ``sessionmaker`` empty ``cache`` when they commit a change to a
    user or a session (``Auth`` does this with its own)."""
    info = dict(sessionmaker.kw.get("info") or {})
    info[CACHE_INFO_KEY] = cache
    sessionmaker.configure(info=info)


def create_reader(
    url: URL, *, pool_size: int = 3, pgbouncer: bool = False, cache_size: int = 0
) -> CachedReader:
    """The session check for ``url``'s backend, caching up to ``cache_size`` sessions (see
    ``effective_cache_size``). ``pool_size`` and ``pgbouncer`` apply to PostgreSQL; SQLite's
    reader holds one connection."""
    cache = SessionCache(cache_size)
    if is_sqlite(url):
        sqlite = SQLiteReader(url)
        return CachedReader(sqlite, cache, SQLiteFeed(sqlite, cache) if cache_size else None)
    reader = AsyncpgReader(url, pool_size=pool_size, pgbouncer=pgbouncer)
    return CachedReader(reader, cache, PostgresFeed(reader.dsn, cache) if cache_size else None)


def effective_cache_size(settings: Settings, *, sqlite: bool) -> int:
    """``AUTHDB_SESSION_CACHE_SIZE``, or 0 where PostgreSQL cannot tell this process about
    changes: behind PgBouncer (LISTEN needs a session of its own, which transaction pooling
    does not give) or with a pool of 2 (no room for the LISTEN connection)."""
    if sqlite:
        return settings.session_cache_size
    if settings.database_pgbouncer or settings.database_pool_size < 3:
        return 0
    return settings.session_cache_size
