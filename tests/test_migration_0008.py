"""Migration 0008 (profile fields) upgrades a 0007 database in place, on SQLite and PostgreSQL.

``users.profile`` appears, nullable and NULL for every existing account (JSONB on PostgreSQL);
every user and session survives (a batch rebuild of ``users`` on SQLite would have cascaded to
the sessions); a profile written afterwards reads back through the ORM and the per-request
reader; and the revision goes down to 0007 (keeping users and sessions) and up again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from alembic import command
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.migrate import _config
from authdb.db.models import User
from tests.conftest import Harness
from tests.migration_helpers import USERS, database_at

MakeHarness = Callable[..., Awaitable[Harness]]
USERS_QUERY = "SELECT id, username, email, hashed_password, is_superuser FROM users ORDER BY id"
SESSIONS_QUERY = "SELECT id, user_id, revoked_at IS NULL FROM auth_sessions ORDER BY id"


async def _rows(engine: AsyncEngine, query: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(query))]


def _users_columns(connection: Connection) -> dict[str, Any]:
    return {c["name"]: c for c in inspect(connection).get_columns("users")}


async def _columns(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(_users_columns)


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(_config(c), revision))


async def test_a_0007_database_gets_a_profile_column_and_goes_down_again(
    database_url: str, make_harness: MakeHarness
) -> None:
    sessions = await database_at(database_url, "0007", SESSIONS_QUERY)
    engine = create_engine(database_url)
    try:
        users = await _rows(engine, USERS_QUERY)
        assert [row[1] for row in users] == list(USERS)
        assert "profile" not in await _columns(engine)

        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()  # 0008 or later
        column = (await _columns(engine))["profile"]
        assert column["nullable"] is True
        if engine.dialect.name == "postgresql":
            assert str(column["type"]) == "JSONB"
        assert await _rows(engine, USERS_QUERY) == users
        assert await _rows(engine, SESSIONS_QUERY) == sessions  # nothing cascaded away
        assert await _rows(engine, "SELECT profile IS NULL FROM users") == [(True,)] * 3
    finally:
        await engine.dispose()

    harness = await make_harness()  # at head already
    core = harness.auth.core
    profile = {"company": "Acme", "tags": ["a", "ü"], "seats": 3, "nested": {"x": None}}
    async with core.sessionmaker.begin() as db:
        alice = await db.scalar(select(User).where(User.username == "alice"))
        assert alice is not None and alice.profile is None
        alice.profile = profile
    async with core.sessionmaker() as db:
        assert await db.scalar(select(User.profile).where(User.id == 1)) == profile
    # The per-request reader (stdlib sqlite3 or asyncpg) gives the JSON back as a dict too.
    now = datetime.now(UTC)
    session_id = next(s[0] for s in sessions if s[1] == 1)
    read = await core.session_reader.live_user(session_id, 1, now)
    assert read is not None and read.profile == profile
    other = await core.session_reader.live_user(next(s[0] for s in sessions if s[1] == 2), 2, now)
    assert other is not None and other.profile is None

    await _downgrade(core.engine, "0007")
    assert await migrate.current_revision(core.engine) == "0007"
    assert "profile" not in await _columns(core.engine)
    assert await _rows(core.engine, USERS_QUERY) == users
    assert await _rows(core.engine, SESSIONS_QUERY) == sessions

    await migrate.upgrade(core.engine)
    assert await migrate.is_up_to_date(core.engine)
    assert await _rows(core.engine, "SELECT profile IS NULL FROM users") == [(True,)] * 3
