"""Regression tests for bugs an attack on the session cache (authdb.db.session_cache) found.

* A request's in-place change to ``user.profile`` (a mutable dict) reaches every later request
  of that user: the cache hands each request the same dict object.
* A user's sessions each keep their own copy of the profile: memory grows with sessions times
  profile size, beyond the README's "about 1.5 KB a session".
* SQLite: after the database is restored from a backup under running processes, a process
  whose ``auth_changes`` position is ahead of the restored ids misses every later change.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import make_url

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.db.models import User
from authdb.db.session_cache import MAX_JSON_CHARS, CachedReader
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
DEADLINE_SECONDS = 10.0


class NicknameProfile(BaseModel):
    nickname: str | None = None


class BioProfile(BaseModel):
    bio: str = ""


MakeApp = Callable[[type[BaseModel]], Awaitable[Harness]]


@pytest.fixture
async def make_app(make_settings: Callable[..., Settings]) -> AsyncIterator[MakeApp]:
    """``await make_app(Profile)``: the service with that profile model, started, plus
    ``/greeting``, an application route that decorates ``user.profile`` for its answer only."""
    async with AsyncExitStack() as stack:

        async def _make(profile: type[BaseModel]) -> Harness:
            auth = Auth(make_settings(), profile=profile)
            app = create_app(auth=auth)
            _add_greeting(app, auth)
            await migrate.upgrade(auth.core.engine)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            )
            await stack.enter_async_context(client)
            return Harness(auth, client)

        yield _make


def _add_greeting(app: FastAPI, auth: Auth) -> None:
    @app.get("/greeting")
    async def greeting(user: User = Depends(auth.current_active_user)) -> dict[str, Any]:
        profile = user.profile if user.profile is not None else {}
        # Display only, never stored: a plain dict is the app's to use for this answer.
        profile["display"] = (profile.get("nickname") or user.username).upper()
        return profile


async def _register(harness: Harness, name: str, profile: dict[str, Any]) -> None:
    response = await harness.client.post(
        "/register",
        json={
            "username": name,
            "email": f"{name}@example.com",
            "password": PASSWORD,
            "profile": profile,
        },
    )
    assert response.status_code == 201, response.text


def _bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def _reader(auth: Auth) -> CachedReader:
    reader = auth.core.session_reader
    assert isinstance(reader, CachedReader)
    return reader


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > DEADLINE_SECONDS:
            raise AssertionError(f"{what}: not within {DEADLINE_SECONDS} s")
        await asyncio.sleep(0.01)


# --- 1. the profile dict is shared by every request of a cached session ------------------------


async def test_a_requests_change_to_user_profile_stays_in_that_request(
    make_app: MakeApp,
) -> None:
    harness = await make_app(NicknameProfile)
    await _register(harness, "alice", {"nickname": "al"})
    tokens = await harness.login("alice")
    for _ in range(2):
        response = await harness.client.get("/greeting", headers=_bearer(tokens))
        assert response.status_code == 200, response.text
        assert response.json()["display"] == "AL"
    me = await harness.client.get("/users/me", headers=_bearer(tokens))
    assert me.status_code == 200, me.text
    assert me.json()["profile"] == {"nickname": "al"}  # what is stored, nothing else


# --- 2. memory: one copy of the profile per cached session -------------------------------------

SESSIONS = 40


async def _sessions_with_bio(harness: Harness, bio_chars: int) -> list[dict[str, Any]]:
    await _register(harness, "mallory", {"bio": ""})
    first = await harness.login("mallory")
    patched = await harness.client.patch(
        "/users/me", headers=_bearer(first), json={"profile": {"bio": "x" * bio_chars}}
    )
    assert patched.status_code == 200, patched.text
    # Every login announces a change of the user (last_login_at) and drops their entries:
    # all logins first, then the requests.
    return [await harness.login("mallory") for _ in range(SESSIONS)]


async def test_one_users_sessions_share_one_copy_of_their_values(make_app: MakeApp) -> None:
    harness = await make_app(BioProfile)
    sessions = await _sessions_with_bio(harness, MAX_JSON_CHARS // 2)
    cache = _reader(harness.auth).cache

    async def all_cached() -> bool:
        for tokens in sessions:
            response = await harness.client.get("/users/me", headers=_bearer(tokens))
            assert response.status_code == 200, response.text
        return len(cache) >= SESSIONS  # PostgreSQL: once the logins' NOTIFYs have arrived

    await _eventually(all_cached, "every session to be cached")
    copies = {id(entry.row.user) for entry in cache._entries.values()}
    assert len(copies) == 1, f"{len(copies)} copies of one user's values"


async def test_a_user_with_a_large_profile_is_not_kept(make_app: MakeApp) -> None:
    harness = await make_app(BioProfile)
    sessions = await _sessions_with_bio(harness, MAX_JSON_CHARS * 25)
    cache = _reader(harness.auth).cache
    for _ in range(3):
        for tokens in sessions:
            response = await harness.client.get("/users/me", headers=_bearer(tokens))
            assert response.status_code == 200, response.text
            assert len(response.json()["profile"]["bio"]) == MAX_JSON_CHARS * 25
    assert len(cache) == 0


# --- 3. SQLite: a restored database whose auth_changes ids went back ---------------------------


def _copy_database(source: str, target: str) -> None:
    """SQLite's online backup from ``source`` into ``target`` (sqlite3's .backup/.restore)."""
    with (
        contextlib.closing(sqlite3.connect(source, timeout=30)) as src,
        contextlib.closing(sqlite3.connect(target, timeout=30)) as dst,
    ):
        src.backup(dst)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_after_a_restore_another_process_still_sees_the_next_revocation(
    make_harness: MakeHarness, database_url: str, tmp_path: Any
) -> None:
    first = await make_harness()  # two Auths on one file: two processes
    second = await make_harness()
    await first.create_user("alice")
    path = make_url(database_url).database
    assert path is not None
    backup = str(tmp_path / "backup.db")
    _copy_database(path, backup)
    for _ in range(10):  # changes after the backup (each login stamps the user), seen by both
        tokens = await first.login()
        assert (await second.client.get("/users/me", headers=_bearer(tokens))).status_code == 200
    _copy_database(backup, path)  # the operator restores the backup

    victim = await first.login()
    for _ in range(2):
        response = await second.client.get("/users/me", headers=_bearer(victim))
        assert response.status_code == 200, response.text
    logout = await first.client.post("/logout", headers=_bearer(victim))
    assert logout.status_code == 204, logout.text
    after = await second.client.get("/users/me", headers=_bearer(victim))
    assert after.status_code == 401, "SQLite: the very next request must see the logout"
