"""Migration 0003 (browser sessions) upgrades a 0002 database in place, on SQLite and PostgreSQL.

Every session and refresh token survives (a batch rebuild of ``auth_sessions`` on SQLite would
have cascaded to the refresh tokens), and ``cookie_hash`` is unique.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.migrate import _config
from authdb.names import email_key, username_key
from authdb.passwords import Hasher
from authdb.tokens import hash_opaque_token
from tests.cli import FAST_HASHING
from tests.conftest import PASSWORD, Harness
from tests.test_pages import csrf_field

MakeHarness = Callable[..., Awaitable[Harness]]


@dataclass
class Before:
    """What a 0002 database held: its session and refresh-token rows, and live tokens."""

    sessions: list[tuple[Any, ...]]
    refresh_tokens: list[tuple[Any, ...]]
    live_refresh: dict[str, str]  # username -> a live refresh token


async def _sessions(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, user_id, revoked_at IS NULL FROM auth_sessions ORDER BY id")
        )
        return [tuple(row) for row in rows]


async def _refresh_tokens(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT id, session_id, token_hash, spent_at IS NULL FROM refresh_tokens"
                " ORDER BY id"
            )
        )
        return [tuple(row) for row in rows]


async def _database_at_0002(url: str) -> Before:
    """Two users with API sessions (live, revoked) and refresh tokens (live and spent)."""
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine, "0002")
        hasher = Hasher(
            time_cost=FAST_HASHING["password_hash_time_cost"],
            memory_kib=FAST_HASHING["password_hash_memory_kib"],
        )
        hashed = await hasher.hash(PASSWORD)
        now = datetime.now(UTC)
        later = now + timedelta(days=7)
        live = {
            "alice": "alice-live-refresh-token-" + "a" * 18,
            "bob": "bob-live-refresh-" + "b" * 26,
        }
        async with engine.begin() as connection:
            for name in ("alice", "bob"):  # ids 1 and 2
                await connection.execute(
                    text(
                        "INSERT INTO users (username, username_key, email, email_key,"
                        " disabled, hashed_password, is_verified, is_superuser, created_at,"
                        " updated_at) VALUES (:u, :uk, :e, :ek, false, :h, true, false,"
                        " :now, :now)"
                    ),
                    {
                        "u": name,
                        "uk": username_key(name),
                        "e": f"{name}@example.com",
                        "ek": email_key(f"{name}@example.com"),
                        "h": hashed,
                        "now": now,
                    },
                )
            sessions = [
                (1, 1, None),  # alice, live: a spent token and its live successor
                (2, 2, None),  # bob, live
                (3, 1, now),  # alice, revoked
                (4, 2, None),  # bob, live, no token left unspent
            ]
            for _session_id, user_id, revoked in sessions:
                await connection.execute(
                    text(
                        "INSERT INTO auth_sessions (user_id, created_at, last_used_at,"
                        " expires_at, revoked_at, user_agent, ip_address)"
                        " VALUES (:user, :now, :now, :later, :revoked, 'curl/8', '10.0.0.1')"
                    ),
                    {
                        "user": user_id,
                        "now": now,
                        "later": later,
                        "revoked": revoked,
                    },
                )
            tokens = [
                (1, 1, "alice-spent", now),
                (2, 1, live["alice"], None),
                (3, 2, live["bob"], None),
                (4, 3, "alice-revoked", None),
                (5, 4, "bob-spent", now),
            ]
            for _token_id, session_id, raw, spent in tokens:
                await connection.execute(
                    text(
                        "INSERT INTO refresh_tokens (session_id, token_hash, created_at,"
                        " spent_at) VALUES (:session, :hash, :now, :spent)"
                    ),
                    {
                        "session": session_id,
                        "hash": hash_opaque_token(raw),
                        "now": now,
                        "spent": spent,
                    },
                )
        return Before(await _sessions(engine), await _refresh_tokens(engine), live)
    finally:
        await engine.dispose()


async def _insert_session(engine: AsyncEngine, cookie_hash: str | None) -> int:
    """A new session of user 1 carrying ``cookie_hash``; its id."""
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        new_id = await connection.scalar(
            text(
                "INSERT INTO auth_sessions (user_id, created_at, last_used_at, expires_at,"
                " cookie_hash) VALUES (1, :now, :now, :later, :cookie) RETURNING id"
            ),
            {"now": now, "later": now + timedelta(days=1), "cookie": cookie_hash},
        )
    return int(new_id)


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(_config(c), revision))


async def _page_sign_in(client: httpx.AsyncClient, username: str) -> httpx.Response:
    login = await client.get("/login")
    return await client.post(
        "/login",
        data={"csrf_token": csrf_field(login.text), "username": username, "password": PASSWORD},
    )


async def test_a_0002_database_keeps_every_session_and_refresh_token(
    database_url: str, make_harness: MakeHarness
) -> None:
    before = await _database_at_0002(database_url)
    assert [row[0] for row in before.sessions] == [1, 2, 3, 4]
    assert [row[:2] for row in before.refresh_tokens] == [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4)]
    harness = await make_harness()  # migrates to head, as `authdb migrate` does
    engine = harness.auth.core.engine
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert await _sessions(engine) == before.sessions
    assert await _refresh_tokens(engine) == before.refresh_tokens
    async with engine.connect() as connection:
        hashes = (await connection.execute(text("SELECT cookie_hash FROM auth_sessions"))).all()
    assert {row[0] for row in hashes} == {None}  # old sessions are API sessions
    # The old sessions still work: their refresh tokens rotate, their access tokens serve.
    for name, refresh in before.live_refresh.items():
        response = await harness.client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
        )
        assert response.status_code == 200, response.text
        access = response.json()["access_token"]
        me = await harness.client.get("/users/me", headers={"Authorization": f"Bearer {access}"})
        assert me.json()["username"] == name
    revoked = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": "alice-revoked"}
    )
    assert revoked.status_code == 401
    # Listed next to a new browser session, which the new column carries.
    signed_in = await _page_sign_in(harness.client, "alice")
    assert signed_in.status_code == 303, signed_in.text
    cookie = harness.client.cookies["authdb_session"]
    listed = (await harness.client.get("/users/me/sessions")).json()
    assert [s["id"] for s in listed if not s["current"]] == [1]
    (current,) = [s["id"] for s in listed if s["current"]]
    assert current > 4
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT cookie_hash FROM auth_sessions WHERE id = :id"), {"id": current}
        )
    assert stored == hash_opaque_token(cookie)


async def test_cookie_hash_is_unique(database_url: str, make_harness: MakeHarness) -> None:
    await _database_at_0002(database_url)
    harness = await make_harness()
    engine = harness.auth.core.engine
    added = [await _insert_session(engine, "f" * 64)]
    # Many API sessions: NULL is no duplicate.
    added += [await _insert_session(engine, None), await _insert_session(engine, None)]
    with pytest.raises(IntegrityError):
        await _insert_session(engine, "f" * 64)
    assert [row[0] for row in await _sessions(engine)] == [1, 2, 3, 4, *added]


async def test_downgrade_to_0002_and_up_again_keeps_the_refresh_tokens(
    database_url: str, make_harness: MakeHarness
) -> None:
    before = await _database_at_0002(database_url)
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
        cookie_session = await _insert_session(engine, "e" * 64)
        await _downgrade(engine, "0002")
        assert await migrate.current_revision(engine) == "0002"
        assert await _refresh_tokens(engine) == before.refresh_tokens
        await migrate.upgrade(engine)
        assert await migrate.is_up_to_date(engine)
        assert await _refresh_tokens(engine) == before.refresh_tokens
        assert [row[0] for row in await _sessions(engine)] == [1, 2, 3, 4, cookie_session]
    finally:
        await engine.dispose()
    harness = await make_harness()
    response = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": before.live_refresh["bob"]}
    )
    assert response.status_code == 200, response.text
