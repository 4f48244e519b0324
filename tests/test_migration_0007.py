"""Migration 0007 (audit chain) upgrades a 0006 database in place, on SQLite and PostgreSQL.

The events already in the trail are chained in id order, exactly as authdb chains new ones
(``authdb audit verify`` says ok, and the next event continues the chain); the new columns
are NOT NULL with a unique chain position; the trail's other indexes survive SQLite's table
copy; and the revision goes down to 0006 (keeping every event) and up again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.migrate import _config
from authdb.services import audit, audit_chain
from tests.cli import run_cli
from tests.conftest import Harness
from tests.migration_helpers import database_at

MakeHarness = Callable[..., Awaitable[Harness]]
SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
CHAIN_COLUMNS = {"chain_seq", "prev_hash", "row_hash"}
EVENTS = sa.table(  # audit_events as revision 0006 has it
    "audit_events",
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("event", sa.String),
    sa.column("user_id", sa.BigInteger),
    sa.column("actor_id", sa.BigInteger),
    sa.column("ip_address", sa.String),
    sa.column("user_agent", sa.String),
    sa.column("detail", sa.JSON),
)
START = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
# Events as earlier revisions wrote them, fields as varied as the trail's.
OLD_EVENTS: list[dict[str, Any]] = [
    {"event": "user_created", "user_id": 1, "user_agent": "authdb-cli", "detail": None},
    {"event": "login_failed", "user_id": 1, "ip_address": "192.0.2.1", "detail": None},
    {
        "event": "login_ok",
        "user_id": 1,
        "ip_address": "2001:db8::1",
        "user_agent": "Mozilla/5.0 (Bücher; \u202e) \u2603",
        "detail": {"session_id": 4, "mfa": None},
    },
    {"event": "account_updated", "user_id": 2, "detail": {"fields": ["username"], "n": 1.5}},
    {"event": "user_deleted", "user_id": 3, "actor_id": 2, "detail": {"é": {"nested": True}}},
]


async def _rows(engine: AsyncEngine, query: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(query))).all())


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    return {
        "columns": {c["name"]: c["nullable"] for c in inspector.get_columns("audit_events")},
        "indexes": {
            index["name"]: (tuple(index["column_names"]), bool(index.get("unique")))
            for index in inspector.get_indexes("audit_events")
        },
    }


async def _inspect(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(_schema)


async def _add_old_events(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for n, fields in enumerate(OLD_EVENTS):
            # One in another time zone: the chain hashes the instant, in UTC.
            zone = timezone(timedelta(hours=-5)) if n == 2 else UTC
            moment = (START + timedelta(seconds=n)).astimezone(zone)
            await connection.execute(EVENTS.insert().values(created_at=moment, **fields))


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(_config(c), revision))


def _cli(database_url: str) -> Any:
    env = {"AUTHDB_DATABASE_URL": database_url, "AUTHDB_SECRET_KEY": SECRET}
    return run_cli(["audit", "verify"], env=env)


async def test_a_0006_database_gets_its_events_chained_and_goes_down_again(
    database_url: str, make_harness: MakeHarness
) -> None:
    await database_at(database_url, "0006", "SELECT 1")
    engine = create_engine(database_url)
    try:
        await _add_old_events(engine)
        before = await _inspect(engine)
        assert not CHAIN_COLUMNS & set(before["columns"])
        old = await _rows(engine, "SELECT id, event FROM audit_events ORDER BY id")

        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()  # 0007 or later
        schema = await _inspect(engine)
        assert {name: schema["columns"][name] for name in CHAIN_COLUMNS} == dict.fromkeys(
            CHAIN_COLUMNS, False
        )
        assert schema["indexes"]["ix_audit_events_chain_seq"] == (("chain_seq",), True)
        # SQLite copied the table to make the columns NOT NULL: its indexes came along.
        assert before["indexes"].items() <= schema["indexes"].items()
        chained = await _rows(
            engine, "SELECT id, event, chain_seq, prev_hash, row_hash FROM audit_events ORDER BY id"
        )
        assert [(row.id, row.event) for row in chained] == [(r.id, r.event) for r in old]
        assert [row.chain_seq for row in chained] == [1, 2, 3, 4, 5]
        assert chained[0].prev_hash == audit_chain.GENESIS
        assert [row.prev_hash for row in chained[1:]] == [row.row_hash for row in chained[:-1]]
        with pytest.raises(IntegrityError):  # one event per place in the chain
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE audit_events SET chain_seq = 1 WHERE chain_seq = 2")
                )
    finally:
        await engine.dispose()

    # The migration hashed the old events exactly as verify reads them back.
    result = await asyncio.to_thread(_cli, database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ok: 5 events, head {chained[-1].row_hash}\n"

    harness = await make_harness()  # at head already
    core = harness.auth.core
    async with core.sessionmaker.begin() as db:
        audit.record(db, "after_upgrade", client=None, now=datetime.now(UTC), user_id=1)
    report = await audit_chain.verify(core)
    assert (report.ok, report.count) == (True, 6)
    [newest] = await _rows(
        core.engine, "SELECT chain_seq, prev_hash FROM audit_events WHERE event = 'after_upgrade'"
    )
    assert (newest.chain_seq, newest.prev_hash) == (6, chained[-1].row_hash)

    await _downgrade(core.engine, "0006")
    assert await migrate.current_revision(core.engine) == "0006"
    schema = await _inspect(core.engine)
    assert not CHAIN_COLUMNS & set(schema["columns"])
    assert schema["indexes"] == before["indexes"]
    events = await _rows(core.engine, "SELECT event FROM audit_events ORDER BY id")
    assert [row.event for row in events] == [e["event"] for e in OLD_EVENTS] + ["after_upgrade"]

    await migrate.upgrade(core.engine)
    assert await migrate.is_up_to_date(core.engine)
    report = await audit_chain.verify(core)
    assert (report.ok, report.count) == (True, 6)
