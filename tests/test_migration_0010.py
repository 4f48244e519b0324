"""Migration 0010 (changes announced to the session caches) on a 0009 database, on SQLite and
PostgreSQL.

The upgrade keeps every user and session and adds ``auth_changes`` and the triggers: on SQLite
rows in ``auth_changes``, on PostgreSQL a NOTIFY on ``authdb_auth_changes`` with the user's id
(the table exists there too, and stays empty). What is announced: a user updated or deleted,
a session revoked, re-dated, moved to another user, its cookie changed, or deleted while live.
What is not: a session's bookkeeping (``last_used_at``, ``ip_address``, ``user_agent``), a new
session, the deletion of a revoked session, a rolled-back change. The downgrade to 0009 removes
table, triggers and functions (and changes to users then work and announce nothing); the
upgrade brings them back.

Absence is shown without waiting: on PostgreSQL a barrier NOTIFY sent after the change commits
arrives after any notification of the change, so whatever came before it is all there is.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.migrate import _config
from authdb.db.session_cache import CHANNEL
from tests.migration_helpers import database_at

USERS_QUERY = "SELECT id, username, email, hashed_password, is_superuser FROM users ORDER BY id"
SESSIONS_QUERY = "SELECT id, user_id, revoked_at IS NULL FROM auth_sessions ORDER BY id"
SQLITE_TRIGGERS = {
    ("auth_changes_users_update", "users"),
    ("auth_changes_users_delete", "users"),
    ("auth_changes_sessions_update", "auth_sessions"),
    ("auth_changes_sessions_delete", "auth_sessions"),
}
POSTGRES_TRIGGERS = {
    ("authdb_users_changed", "users"),
    ("authdb_sessions_changed", "auth_sessions"),
    ("authdb_sessions_deleted", "auth_sessions"),
    ("authdb_users_truncated", "users"),
    ("authdb_sessions_truncated", "auth_sessions"),
}
POSTGRES_FUNCTIONS = {"authdb_user_changed", "authdb_session_changed", "authdb_all_changed"}
BARRIER = "barrier"
DEADLINE_SECONDS = 10.0

# The 0009 database of tests/migration_helpers: users 1 alice, 2 bob, 3 carol; sessions
# 1 (alice), 2 (bob), 3 (alice's browser session), 4 (carol), all live. Each step runs in a
# transaction of its own, in this order; then the user ids it announced, in order.
STEPS: list[tuple[str, list[int]]] = [
    ("UPDATE users SET full_name = 'Alice' WHERE id = 1", [1]),
    ("UPDATE users SET last_login_at = CURRENT_TIMESTAMP WHERE id = 2", [2]),
    (
        "UPDATE auth_sessions SET last_used_at = CURRENT_TIMESTAMP, ip_address = '10.0.0.1',"
        " user_agent = 'agent/2' WHERE id = 2",
        [],
    ),
    (
        "INSERT INTO auth_sessions (user_id, created_at, last_used_at, expires_at)"
        " VALUES (2, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        [],
    ),
    ("UPDATE auth_sessions SET revoked_at = CURRENT_TIMESTAMP WHERE id = 2", [2]),
    ("DELETE FROM auth_sessions WHERE id = 2", []),  # revoked already: nothing changes
    ("UPDATE auth_sessions SET expires_at = CURRENT_TIMESTAMP WHERE id = 3", [1]),
    ("UPDATE auth_sessions SET cookie_hash = NULL WHERE id = 3", [1]),
    ("UPDATE auth_sessions SET user_id = 2 WHERE id = 4", [3]),  # the owner it had
    ("DELETE FROM auth_sessions WHERE id = 4", [2]),  # live: announced
]


async def _rows(engine: AsyncEngine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(query), params)]


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def _triggers(engine: AsyncEngine) -> set[tuple[str, str]]:
    if engine.dialect.name == "sqlite":
        query = "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
    else:
        query = (
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE NOT t.tgisinternal"
        )
    return {(str(name), str(table)) for name, table in await _rows(engine, query)}


async def _functions(engine: AsyncEngine) -> set[str]:
    if engine.dialect.name == "sqlite":
        return set()
    query = "SELECT proname FROM pg_proc WHERE proname LIKE 'authdb%'"
    return {str(name) for (name,) in await _rows(engine, query)}


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(_config(c), revision))


class Announcements:
    """The user ids migration 0010's triggers announce: SQLite's new ``auth_changes`` rows, or
    what a LISTENing asyncpg connection receives on PostgreSQL."""

    def __init__(self, engine: AsyncEngine, database_url: str) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self.dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.payloads: list[str] = []
        self.listener: Any = None
        self.last_id = 0

    async def __aenter__(self) -> Announcements:
        if not self.sqlite:
            self.listener = await asyncpg.connect(self.dsn)
            await self.listener.add_listener(CHANNEL, self._received)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.listener is not None:
            await self.listener.close()

    def _received(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)

    async def of(self, statement: str, *, rollback: bool = False) -> list[int]:
        """Run ``statement`` in a transaction (committed, or rolled back) and return the user
        ids it announced."""
        async with self.engine.connect() as connection:
            await connection.execute(text(statement))
            await (connection.rollback() if rollback else connection.commit())
        if self.sqlite:
            return await self._new_rows()
        return await self._notified()

    async def _new_rows(self) -> list[int]:
        query = "SELECT id, user_id FROM auth_changes WHERE id > :last"
        rows = await _rows(self.engine, query, last=self.last_id)
        if rows:
            self.last_id = max(int(row[0]) for row in rows)
        return [int(row[1]) for row in sorted(rows)]

    async def _notified(self) -> list[int]:
        async with self.engine.begin() as connection:  # committed after the change: after it
            await connection.execute(text(f"SELECT pg_notify('{CHANNEL}', '{BARRIER}')"))
        deadline = time.monotonic() + DEADLINE_SECONDS
        while BARRIER not in self.payloads:
            assert time.monotonic() < deadline, "the barrier notification did not arrive"
            await asyncio.sleep(0.01)
        before = self.payloads[: self.payloads.index(BARRIER)]
        self.payloads.clear()
        return [int(payload) for payload in before]


async def test_a_0009_database_announces_changes_after_0010_and_not_after_going_down(
    database_url: str,
) -> None:
    sessions = await database_at(database_url, "0009", SESSIONS_QUERY)
    engine = create_engine(database_url)
    try:
        users = await _rows(engine, USERS_QUERY)
        assert "auth_changes" not in await _tables(engine)
        assert await _triggers(engine) == set()

        await migrate.upgrade(engine, "0010")
        assert await migrate.current_revision(engine) == "0010"
        assert await _rows(engine, USERS_QUERY) == users
        assert await _rows(engine, SESSIONS_QUERY) == sessions
        assert "auth_changes" in await _tables(engine)
        sqlite = engine.dialect.name == "sqlite"
        assert await _triggers(engine) == (SQLITE_TRIGGERS if sqlite else POSTGRES_TRIGGERS)
        assert await _functions(engine) == (set() if sqlite else POSTGRES_FUNCTIONS)

        async with Announcements(engine, database_url) as announced:
            for statement, expected in STEPS:
                assert await announced.of(statement) == expected, statement
            rolled_back = "UPDATE users SET disabled = true WHERE id = 3"
            assert await announced.of(rolled_back, rollback=True) == []
            # Alice goes with her sessions (1 live, 3 expired but not revoked): SQLite writes a
            # row for each, PostgreSQL folds identical payloads of one transaction into one.
            deleted = await announced.of("DELETE FROM users WHERE id = 1")
            assert set(deleted) == {1} and len(deleted) == (3 if sqlite else 1), deleted
        if not sqlite:
            assert await _rows(engine, "SELECT count(*) FROM auth_changes") == [(0,)]

        await _downgrade(engine, "0009")
        assert await migrate.current_revision(engine) == "0009"
        assert "auth_changes" not in await _tables(engine)
        assert await _triggers(engine) == set()
        assert await _functions(engine) == set()
        if sqlite:  # a trigger left behind would fail here: no table auth_changes
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE users SET full_name = 'B' WHERE id = 2"))
        else:
            async with Announcements(engine, database_url) as announced:
                assert await announced.of("UPDATE users SET full_name = 'B' WHERE id = 2") == []

        await migrate.upgrade(engine)
        assert await migrate.is_up_to_date(engine)
        assert await _triggers(engine) == (SQLITE_TRIGGERS if sqlite else POSTGRES_TRIGGERS)
        async with Announcements(engine, database_url) as announced:
            assert await announced.of("UPDATE users SET full_name = 'C' WHERE id = 2") == [2]
    finally:
        await engine.dispose()
