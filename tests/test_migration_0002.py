"""Migration 0002 upgrades a round-1 database in place, on SQLite and PostgreSQL."""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.passwords import Hasher
from tests.cli import FAST_HASHING, run_cli
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]


def _round1_key(text: str) -> str:
    """How round 1 computed username and email keys."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


async def _round1_database(url: str, users: list[tuple[str, str]]) -> None:
    """A database at revision 0001 holding ``users`` (username, email), a session, an event."""
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine, "0001")
        hasher = Hasher(
            time_cost=FAST_HASHING["password_hash_time_cost"],
            memory_kib=FAST_HASHING["password_hash_memory_kib"],
        )
        hashed = await hasher.hash(PASSWORD)
        now = datetime.now(UTC)
        async with engine.begin() as connection:
            for username, email in users:
                await connection.execute(
                    text(
                        "INSERT INTO users (username, username_key, email, email_key, disabled,"
                        " hashed_password, is_verified, is_superuser, created_at, updated_at)"
                        " VALUES (:u, :uk, :e, :ek, false, :h, true, false, :now, :now)"
                    ),
                    {
                        "u": username,
                        "uk": _round1_key(username),
                        "e": email,
                        "ek": _round1_key(email),
                        "h": hashed,
                        "now": now,
                    },
                )
            await connection.execute(
                text(
                    "INSERT INTO auth_sessions (user_id, created_at, last_used_at, expires_at)"
                    " VALUES (1, :now, :now, :later)"
                ),
                {"now": now, "later": now + timedelta(days=1)},
            )
            await connection.execute(
                text("INSERT INTO audit_events (created_at, event, user_id) VALUES (:now, 'x', 1)"),
                {"now": now},
            )
    finally:
        await engine.dispose()


async def _column_types(engine: AsyncEngine) -> dict[tuple[str, str], str]:
    async with engine.connect() as connection:
        rows = (
            await connection.exec_driver_sql(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public'"
            )
        ).all()
    return {(table, column): kind for table, column, kind in rows}


async def test_a_round1_database_is_upgraded_in_place(
    database_url: str, make_harness: MakeHarness
) -> None:
    await _round1_database(database_url, [("ΐota1", "iota@example.com"), ("bob", "B@Example.com")])
    harness = await make_harness()  # runs `migrate.upgrade` to head, as `authdb migrate` does
    engine = harness.auth.core.engine
    assert await migrate.current_revision(engine) == migrate.head_revision()
    # Every user kept; the keys refolded, so every case variant now logs in.
    for name in ("ΐota1", "ΐota1".upper(), "BOB", "b@example.com"):
        response = await harness.client.post(
            "/token", data={"username": name, "password": PASSWORD}
        )
        assert response.status_code == 200, (name, response.text)
    me = await harness.client.get("/users/me", headers=await harness.bearer("bob"))
    assert me.json()["pending_email"] is None
    if engine.dialect.name == "postgresql":
        types = await _column_types(engine)
        for column in (
            ("users", "id"),
            ("auth_sessions", "id"),
            ("auth_sessions", "user_id"),
            ("audit_events", "id"),
            ("refresh_tokens", "session_id"),
        ):
            assert types[column] == "bigint", column
    # Ids past 32 bits now fit (PostgreSQL refused them before the upgrade).
    async with engine.begin() as connection:
        now = datetime.now(UTC)
        await connection.execute(
            text(
                "INSERT INTO auth_sessions (id, user_id, created_at, last_used_at, expires_at)"
                " VALUES (:id, 1, :now, :now, :now)"
            ),
            {"id": 2**40, "now": now},
        )
    assert (
        await harness.client.delete(
            f"/users/me/sessions/{2**40}", headers=await harness.bearer("bob")
        )
    ).status_code == 404  # someone else's: indistinguishable from none


async def test_keys_that_now_collide_stop_the_upgrade_naming_both_users(
    database_url: str, tmp_path: Any
) -> None:
    # Round 1 kept "00\u0131" (dotless i) and "00i" apart; they are one name now.
    await _round1_database(database_url, [("00\u0131", "a@example.com"), ("00i", "b@example.com")])
    result = run_cli(["migrate", "--database-url", database_url], env={}, cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "users 1 and 2" in lines[0]
    assert "Traceback" not in result.stderr
    engine = create_engine(database_url)
    try:
        assert await migrate.current_revision(engine) == "0001"  # nothing half-done
    finally:
        await engine.dispose()


@pytest.mark.parametrize("revision", ["0001"])
async def test_downgrade_to_round1_and_up_again(database_url: str, revision: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
        from alembic import command

        from authdb.db.migrate import _config

        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(_config(c), revision))
        assert await migrate.current_revision(engine) == revision
        await migrate.upgrade(engine)
        assert await migrate.is_up_to_date(engine)
    finally:
        await engine.dispose()
