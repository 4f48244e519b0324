"""The per-process session cache (authdb.db.session_cache): what it saves, and that no change
to a session or a user is served stale, on SQLite and PostgreSQL.

Mechanisms, not timings: database reads are counted by wrapping the cache's native reader
(``CachedReader.reader``) in ``CountingReader``; the cache's length and generation are looked
at directly. Where a change reaches another process only eventually (PostgreSQL's NOTIFY, the
listener's reconnection) the test polls with a generous deadline.

* A second request with the same token reads nothing.
* A change made in this process is seen by the very next request, one case per kind of change,
  bearer and cookie sessions alike; ``watch_commits`` alone does it (the feed silenced), and a
  login or a refresh (bookkeeping only) leaves the cache alone.
* Another process (a second ``Auth`` on the same database, the CLI, an operator's SQL): on
  SQLite the very next request sees it, on PostgreSQL within the deadline.
* PostgreSQL's listener lost: the cache is emptied and bypassed until it is back, and a
  revocation made meanwhile is honoured.
* ``SessionCache`` itself: LRU bound, generations, forget_user, expiry, MAX_AGE_SECONDS, size 0,
  a Hypothesis model, memory bound; ``SQLiteFeed``'s gap check; ``effective_cache_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import jwt
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import make_url
from sqlalchemy.orm import configure_mappers

from authdb import Auth, Settings
from authdb.db import migrate, session_cache
from authdb.db.engine import create_engine
from authdb.db.models import User
from authdb.db.session_cache import (
    CHANNEL,
    MAX_AGE_SECONDS,
    CachedReader,
    SessionCache,
    SQLiteFeed,
    effective_cache_size,
)
from authdb.db.session_reader import LiveRow, RowReader, SQLiteReader
from authdb.services import email_tokens
from tests import test_pages
from tests.cli import run_cli
from tests.conftest import PASSWORD, PG_ADMIN_DSN, Harness
from tests.test_pages import Site

MakeHarness = Callable[..., Awaitable[Harness]]
make_site = test_pages.make_site  # the pages' fixture: a started service with browsers

DEADLINE_SECONDS = 10.0
NEW_PASSWORD = "a brand new passphrase 42"
SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"  # conftest's make_settings
FAR = datetime(2100, 1, 1, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)


# --- helpers ------------------------------------------------------------------------------------


class CountingReader:
    """The cache's native reader, counting the reads that reach the database."""

    def __init__(self, inner: RowReader) -> None:
        self.inner = inner
        self.bearer = 0
        self.cookie = 0

    async def bearer_row(self, session_id: int, user_id: int, now: datetime) -> LiveRow | None:
        self.bearer += 1
        return await self.inner.bearer_row(session_id, user_id, now)

    async def cookie_row(self, cookie_hash: str, now: datetime) -> LiveRow | None:
        self.cookie += 1
        return await self.inner.cookie_row(cookie_hash, now)

    async def close(self) -> None:
        await self.inner.close()


def counting(auth: Auth) -> tuple[CachedReader, CountingReader]:
    """``auth``'s session check, its database reads counted from now on."""
    reader = auth.core.session_reader
    assert isinstance(reader, CachedReader)
    counter = CountingReader(reader.reader)
    reader.reader = counter
    return reader, counter


def is_sqlite(database_url: str) -> bool:
    return database_url.startswith("sqlite")


def pg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = DEADLINE_SECONDS
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took, fails after ``seconds``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


# A user id no test creates: the payload of the barrier notification below.
BARRIER_USER = 2_000_000_001


async def settled(reader: CachedReader, database_url: str) -> None:
    """Wait until ``reader`` uses its cache and every change committed so far has reached it.

    On SQLite the next request's ``PRAGMA data_version`` check catches up by itself. On
    PostgreSQL: the listener is up, and a NOTIFY sent now (delivered after every notification
    of earlier commits) has arrived, seen by an entry of its own being dropped.
    """
    await eventually(reader._current, "the session cache to be in use")
    if is_sqlite(database_url):
        return
    cache = reader.cache
    cache.put("barrier", LiveRow(0, FAR, {"id": BARRIER_USER}), cache.generation)
    connection = await asyncpg.connect(pg_dsn(database_url))
    try:
        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, str(BARRIER_USER))
    finally:
        await connection.close()

    async def arrived() -> bool:
        return cache.get("barrier", datetime.now(UTC)) is None

    await eventually(arrived, "the barrier notification")


async def sql(database_url: str, statement: str) -> None:
    """Run ``statement`` and commit, on a connection of its own: an operator's sqlite3 or psql."""
    if is_sqlite(database_url):
        path = make_url(database_url).database
        assert path is not None
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
            connection.execute("PRAGMA foreign_keys = ON")
            with connection:
                connection.execute(statement)
        return
    connection = await asyncpg.connect(pg_dsn(database_url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def sid(tokens: dict[str, Any]) -> int:
    return int(jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"])


async def me(harness: Harness, tokens: dict[str, Any]) -> httpx.Response:
    return await harness.client.get("/users/me", headers=bearer(tokens))


async def warm(harness: Harness, tokens: dict[str, Any], counter: CountingReader) -> None:
    """Two requests with ``tokens``: the first may read the database, the second must not."""
    first = await me(harness, tokens)
    assert first.status_code == 200, first.text
    reads = counter.bearer
    second = await me(harness, tokens)
    assert second.status_code == 200, second.text
    assert counter.bearer == reads, "the second request read the database: no cache hit"
    assert second.json() == first.json()


# --- 1. hits ------------------------------------------------------------------------------------


async def test_a_second_request_with_the_same_token_reads_nothing(
    make_harness: MakeHarness, database_url: str
) -> None:
    """One read per session: later requests (and the access tokens of a refresh, which name
    the same session) are answered from the cache; another session is an entry of its own."""
    harness = await make_harness()
    await harness.create_user("alice", full_name="Alice")
    reader, counter = counting(harness.auth)
    tokens = await harness.login()
    other = await harness.login()
    await settled(reader, database_url)

    first = await me(harness, tokens)
    assert first.status_code == 200 and first.json()["full_name"] == "Alice"
    assert counter.bearer == 1
    for _ in range(5):
        again = await me(harness, tokens)
        assert again.json() == first.json()
    assert counter.bearer == 1
    assert len(reader.cache) == 1

    assert (await me(harness, other)).status_code == 200
    assert counter.bearer == 2
    assert len(reader.cache) == 2

    # A refresh only stamps the session (last_used_at): the new access token is a hit.
    refreshed = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    await settled(reader, database_url)
    assert (await me(harness, refreshed.json())).status_code == 200
    assert counter.bearer == 2


async def test_a_cached_session_is_not_served_for_another_user_id(
    make_harness: MakeHarness, database_url: str
) -> None:
    """The cache is keyed by session id; a token whose ``sub`` is not the session's owner
    (minted with the app's own key) is read from the database and refused, not served."""
    harness = await make_harness()
    await harness.create_user("alice")
    bob = await harness.create_user("bob")
    reader, counter = counting(harness.auth)
    tokens = await harness.login("alice")
    await settled(reader, database_url)
    await warm(harness, tokens, counter)
    crossed = harness.auth.core.jwt.encode(
        user_id=bob.id, session_id=sid(tokens), now=harness.auth.core.clock()
    )
    reads = counter.bearer
    response = await harness.client.get("/users/me", headers={"Authorization": f"Bearer {crossed}"})
    assert response.status_code == 401
    assert counter.bearer == reads + 1


# --- 2. changes made in this process: seen by the very next request ------------------------------


@dataclass
class Scene:
    """Alice's cached session (``victim``), another of her sessions, and a superuser."""

    harness: Harness
    reader: CachedReader
    counter: CountingReader
    victim: dict[str, Any]
    other: dict[str, Any]
    admin: dict[str, str]
    alice_id: int

    @property
    def client(self) -> httpx.AsyncClient:
        return self.harness.client


async def make_scene(
    make_harness: MakeHarness, database_url: str, *, silent: bool = False
) -> Scene:
    """``silent``: the cache's change feed replaced by one with no news (``Silent``)."""
    # A reuse interval of 0: a second use of a rotated refresh token is theft at once. No
    # pruning at random logins: its DELETE of ended sessions would empty the cache now and then.
    harness = await make_harness(refresh_reuse_interval_seconds=0, prune_every_n_logins=1_000_000)
    alice = await harness.create_user("alice", is_verified=False, full_name="Alice")
    await harness.create_user("carol", is_superuser=True)
    reader, counter = counting(harness.auth)
    if silent:
        await silence(reader)
    victim = await harness.login("alice")
    other = await harness.login("alice")
    admin = await harness.bearer("carol")
    if not silent:  # a silent feed has no news to wait for
        await settled(reader, database_url)
    await warm(harness, victim, counter)
    return Scene(harness, reader, counter, victim, other, admin, alice.id)


async def _ok(response: Awaitable[httpx.Response], status: int = 204) -> httpx.Response:
    done = await response
    assert done.status_code == status, done.text
    return done


async def _logout(s: Scene) -> None:
    await _ok(s.client.post("/logout", headers=bearer(s.victim)))


async def _delete_session(s: Scene) -> None:
    await _ok(s.client.delete(f"/users/me/sessions/{sid(s.victim)}", headers=bearer(s.other)))


async def _revoke_access(s: Scene) -> None:
    await _ok(s.client.post("/revoke", data={"token": s.victim["access_token"]}), 200)


async def _revoke_refresh(s: Scene) -> None:
    await _ok(s.client.post("/revoke", data={"token": s.victim["refresh_token"]}), 200)


async def _refresh_reuse(s: Scene) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": s.victim["refresh_token"]}
    await _ok(s.client.post("/token", data=form), 200)
    await _ok(s.client.post("/token", data=form), 401)  # spent: theft, the session ends


async def _password_change(s: Scene) -> None:
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    await _ok(s.client.post("/users/me/password", json=body, headers=bearer(s.other)))


async def _admin(s: Scene, changes: dict[str, Any]) -> None:
    await _ok(s.client.patch(f"/users/{s.alice_id}", json=changes, headers=s.admin), 200)


async def _admin_disable(s: Scene) -> None:
    await _admin(s, {"disabled": True})


async def _admin_password(s: Scene) -> None:
    await _admin(s, {"password": NEW_PASSWORD})


async def _admin_delete(s: Scene) -> None:
    await _ok(s.client.delete(f"/users/{s.alice_id}", headers=s.admin))


async def _self_delete(s: Scene) -> None:
    body = {"password": PASSWORD}
    await _ok(s.client.request("DELETE", "/users/me", json=body, headers=bearer(s.other)))


async def _rename(s: Scene) -> None:
    body = {"full_name": "Alice Liddell"}
    await _ok(s.client.patch("/users/me", json=body, headers=bearer(s.other)), 200)


async def _grant_superuser(s: Scene) -> None:
    await _admin(s, {"is_superuser": True})


async def _verify_email(s: Scene) -> None:
    core = s.harness.auth.core
    async with core.sessionmaker.begin() as db:
        alice = await db.get(User, s.alice_id)
        assert alice is not None
        token = await email_tokens.issue(core, db, alice, email_tokens.VERIFY, core.clock())
    await _ok(s.client.post("/verify", json={"token": token}), 200)


@dataclass(frozen=True)
class Change:
    act: Callable[[Scene], Awaitable[None]]
    status: int = 401  # of the victim's next GET /users/me
    shows: dict[str, Any] = field(default_factory=dict)  # fields of that answer


CHANGES = {
    "logout": Change(_logout),
    "delete_session": Change(_delete_session),
    "revoke_access_token": Change(_revoke_access),
    "revoke_refresh_token": Change(_revoke_refresh),
    "refresh_token_reuse": Change(_refresh_reuse),
    "password_change": Change(_password_change),
    "admin_disable": Change(_admin_disable),
    "admin_new_password": Change(_admin_password),
    "admin_delete": Change(_admin_delete),
    "self_delete": Change(_self_delete),
    "rename": Change(_rename, 200, {"full_name": "Alice Liddell"}),
    "grant_superuser": Change(_grant_superuser, 200, {"is_superuser": True}),
    "verify_email": Change(_verify_email, 200, {"is_verified": True}),
}


@pytest.mark.parametrize("name", list(CHANGES))
async def test_a_change_made_here_is_seen_by_the_very_next_request(
    make_harness: MakeHarness, database_url: str, name: str
) -> None:
    """Alice's session is cached; the change is made through this app; her very next request
    (no waiting) is answered from the database with the change applied."""
    scene = await make_scene(make_harness, database_url)
    change = CHANGES[name]
    await change.act(scene)
    reads = scene.counter.bearer
    response = await me(scene.harness, scene.victim)
    assert response.status_code == change.status, response.text
    assert scene.counter.bearer == reads + 1  # read, not served from the cache
    for key, value in change.shows.items():
        assert response.json()[key] == value, key
    if name == "grant_superuser":  # the new right works at once too
        listed = await scene.client.get("/users", headers=bearer(scene.victim))
        assert listed.status_code == 200, listed.text
    if name == "password_change":  # the session that changed it lives on
        assert (await me(scene.harness, scene.other)).status_code == 200


class Silent:
    """A change feed with no news, ever: only this process's commits can empty the cache."""

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


async def silence(reader: CachedReader) -> None:
    """Replace ``reader``'s feed (not started yet) by ``Silent``."""
    assert reader._feed is not None
    await reader._feed.close()  # never started: nothing left running
    reader._feed = Silent()


@pytest.mark.parametrize("name", list(CHANGES))
async def test_this_process_commits_empty_the_cache_without_the_feed(
    make_harness: MakeHarness, database_url: str, name: str
) -> None:
    """With the feed silenced (no data_version, no NOTIFY: nothing from the database can
    arrive during the requests), ``watch_commits`` alone makes the next request read: the
    commit of the change emptied the cache."""
    scene = await make_scene(make_harness, database_url, silent=True)
    generation = scene.reader.cache.generation
    await CHANGES[name].act(scene)
    assert scene.reader.cache.generation > generation
    reads = scene.counter.bearer
    response = await me(scene.harness, scene.victim)
    assert response.status_code == CHANGES[name].status, response.text
    assert scene.counter.bearer == reads + 1


async def test_without_any_news_an_entry_still_ends_at_max_age(
    make_harness: MakeHarness, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backstop: with the feed silenced, an operator's revocation is not known here, and
    the entry is served until it is MAX_AGE_SECONDS old (the cache's monotonic clock is moved
    on, not waited for); then the next request reads and is refused."""
    skipped = SimpleNamespace(seconds=0.0)
    clock = SimpleNamespace(monotonic=lambda: time.monotonic() + skipped.seconds)
    monkeypatch.setattr(session_cache, "time", clock)
    scene = await make_scene(make_harness, database_url, silent=True)
    await _sql_revoke_session(database_url, sid(scene.victim))
    assert (await me(scene.harness, scene.victim)).status_code == 200  # not known: stale
    skipped.seconds = MAX_AGE_SECONDS + 1
    reads = scene.counter.bearer
    assert (await me(scene.harness, scene.victim)).status_code == 401
    assert scene.counter.bearer == reads + 1


async def _sql_revoke_session(database_url: str, session_id: int) -> None:
    statement = "UPDATE auth_sessions SET revoked_at = CURRENT_TIMESTAMP WHERE id = {}"
    await sql(database_url, statement.format(session_id))


async def test_logins_and_refreshes_leave_the_cache_alone(
    make_harness: MakeHarness, database_url: str
) -> None:
    """A login stamps ``last_login_at`` and a refresh ``last_used_at``: no answer changes, so
    with the feed silenced this process's own commits empty nothing either."""
    scene = await make_scene(make_harness, database_url, silent=True)
    generation = scene.reader.cache.generation
    await scene.harness.login("alice")
    await scene.harness.login("carol")
    form = {"grant_type": "refresh_token", "refresh_token": scene.victim["refresh_token"]}
    await _ok(scene.client.post("/token", data=form), 200)
    assert scene.reader.cache.generation == generation
    reads = scene.counter.bearer
    assert (await me(scene.harness, scene.victim)).status_code == 200
    assert scene.counter.bearer == reads


# --- 2b. browser (cookie) sessions ----------------------------------------------------------------


async def _page_logout(site: Site, browser: test_pages.Browser) -> None:
    out = await browser.submit("/account", {}, action="/logout")
    assert out.status_code == 303, out.text[:500]


async def _api_logout(site: Site, browser: test_pages.Browser) -> None:
    out = await browser.client.post("/logout", headers=browser.api_headers())
    assert out.status_code == 204, out.text


async def _ended_by_bearer(site: Site, browser: test_pages.Browser) -> None:
    session_id = await browser.session_id()
    api = await site.api()
    headers = await site.bearer()
    out = await api.delete(f"/users/me/sessions/{session_id}", headers=headers)
    assert out.status_code == 204, out.text


async def _disabled_by_admin(site: Site, browser: test_pages.Browser) -> None:
    api = await site.api()
    alice = (await api.get("/users/me", headers=await site.bearer())).json()["id"]
    headers = await site.bearer("carol")
    out = await api.patch(f"/users/{alice}", json={"disabled": True}, headers=headers)
    assert out.status_code == 200, out.text


COOKIE_CHANGES = {
    "page_logout": _page_logout,
    "api_logout": _api_logout,
    "ended_by_a_bearer_session": _ended_by_bearer,
    "disabled_by_an_admin": _disabled_by_admin,
}


@pytest.mark.parametrize("feed", ["feed", "silent"])
@pytest.mark.parametrize("name", list(COOKIE_CHANGES))
async def test_a_cookie_session_is_cached_and_its_end_seen_at_once(
    make_site: test_pages.MakeSite, database_url: str, name: str, feed: str
) -> None:
    """A signed-in browser's requests are answered from the cache after the first; once its
    session ends here, the very next request carrying the same cookie is signed out. With the
    feed silenced too: this process's commit alone empties the cache."""
    site = await make_site()
    await site.create_user("alice")
    await site.create_user("carol", is_superuser=True)
    reader, counter = counting(site.auth)
    if feed == "silent":
        await silence(reader)
    browser = await (await site.browser()).signed_in()
    cookie = browser.session_cookie
    assert cookie is not None
    if feed == "feed":
        await settled(reader, database_url)
    first = await browser.client.get("/users/me")
    assert first.status_code == 200, first.text
    reads = counter.cookie
    assert (await browser.client.get("/users/me")).status_code == 200
    assert (await browser.client.get("/account")).status_code == 200
    assert counter.cookie == reads  # both served from the cache

    await COOKIE_CHANGES[name](site, browser)
    # The same cookie, replayed by a client of its own (a page sign-out also clears it).
    replay = await site.api()
    name_ = browser.session_cookie_name
    reads = counter.cookie
    again = await replay.get("/users/me", headers={"Cookie": f"{name_}={cookie}"})
    assert again.status_code == 401, again.text
    assert counter.cookie == reads + 1
    account = await replay.get("/account", headers={"Cookie": f"{name_}={cookie}"})
    assert account.status_code == 303


# --- 3. other processes ---------------------------------------------------------------------------


@dataclass
class Pair:
    """Two processes' worth of authdb on one database: ``first`` changes, ``second`` caches."""

    first: Harness
    second: Harness
    reader: CachedReader  # second's
    counter: CountingReader
    tokens: dict[str, Any]  # alice's, cached by second
    alice_id: int
    database_url: str
    tmp_path: Path


def _cli(pair: Pair, *args: str) -> None:
    env = {"AUTHDB_DATABASE_URL": pair.database_url, "AUTHDB_SECRET_KEY": SECRET}
    done = run_cli(list(args), env=env, cwd=pair.tmp_path)
    assert done.returncode == 0, done.stderr


async def _http_logout(pair: Pair) -> None:
    await _ok(pair.first.client.post("/logout", headers=bearer(pair.tokens)))


async def _cli_disable(pair: Pair) -> None:
    _cli(pair, "users", "disable", "alice")


async def _cli_delete(pair: Pair) -> None:
    _cli(pair, "users", "delete", "alice", "--yes")


async def _sql_revoke(pair: Pair) -> None:
    await _sql_revoke_session(pair.database_url, sid(pair.tokens))


async def _sql_sign_everyone_out(pair: Pair) -> None:
    await sql(pair.database_url, "DELETE FROM auth_sessions")


async def _sql_rename(pair: Pair) -> None:
    statement = "UPDATE users SET full_name = 'Operator Renamed' WHERE id = {}"
    await sql(pair.database_url, statement.format(pair.alice_id))


async def _sql_truncate(pair: Pair) -> None:
    await sql(pair.database_url, "TRUNCATE auth_sessions CASCADE")


CROSS = {
    "http_logout": (_http_logout, None),
    "cli_users_disable": (_cli_disable, None),
    "cli_users_delete": (_cli_delete, None),
    "sql_revoke": (_sql_revoke, None),
    "sql_delete_all_sessions": (_sql_sign_everyone_out, None),
    "sql_rename": (_sql_rename, "Operator Renamed"),
}


async def make_pair(make_harness: MakeHarness, database_url: str, tmp_path: Path) -> Pair:
    first = await make_harness()
    second = await make_harness()  # the same database, another Auth: another process
    alice = await first.create_user("alice", full_name="Alice")
    reader, counter = counting(second.auth)
    tokens = await first.login("alice")
    await settled(reader, database_url)
    await warm(second, tokens, counter)
    return Pair(first, second, reader, counter, tokens, alice.id, database_url, tmp_path)


async def _seen_by_second(pair: Pair, renamed: str | None) -> float:
    """Wait (SQLite: not at all) until the second process's answer shows the change; returns
    how long that took."""

    async def changed() -> bool:
        response = await me(pair.second, pair.tokens)
        if renamed is not None:
            return response.status_code == 200 and response.json()["full_name"] == renamed
        return response.status_code == 401

    if is_sqlite(pair.database_url):
        reads = pair.counter.bearer
        assert await changed(), "SQLite: the very next request must see the change"
        assert pair.counter.bearer == reads + 1
        return 0.0
    return await eventually(changed, "PostgreSQL: the other process to see the change")


@pytest.mark.parametrize("name", list(CROSS))
async def test_another_process_sees_a_change(
    make_harness: MakeHarness,
    database_url: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    name: str,
) -> None:
    """Alice's session is cached by the second process; a change comes from the first (HTTP),
    the real ``authdb`` CLI or an operator's SQL. SQLite: the very next request of the second
    sees it. PostgreSQL: it does within the deadline (the delay is recorded, not asserted)."""
    pair = await make_pair(make_harness, database_url, tmp_path)
    act, renamed = CROSS[name]
    await act(pair)
    record_property("seen_after_seconds", await _seen_by_second(pair, renamed))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # LISTEN
async def test_another_process_sees_a_truncate_on_postgresql(
    make_harness: MakeHarness, database_url: str, tmp_path: Path
) -> None:
    """``TRUNCATE auth_sessions`` signs everyone out; row triggers do not fire for it. (SQLite
    has no TRUNCATE: its DELETE FROM fires the row triggers, see sql_delete_all_sessions.)"""
    pair = await make_pair(make_harness, database_url, tmp_path)
    await _sql_truncate(pair)
    await _seen_by_second(pair, None)


# --- 4. PostgreSQL: the listener lost ------------------------------------------------------------


# The backends of the cache's LISTEN connections on database $1: the last statement of one is
# the LISTEN or the listener's ping (the engine's pings are ";", the reader runs its SELECT).
LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    " AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')"
)


async def _listener_pid(admin: Any, database: str) -> int:
    """The backend of the cache's one LISTEN connection on ``database``."""
    rows = await admin.fetch(LISTENERS, database)
    assert len(rows) == 1, rows
    return int(rows[0]["pid"])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # LISTEN
async def test_a_lost_listener_empties_and_bypasses_the_cache_until_it_is_back(
    make_harness: MakeHarness, database_url: str
) -> None:
    """The listener's backend is terminated, and the database refuses new connections so that
    it stays down. The cache is emptied and not used (every request reads); a revocation made
    meanwhile by SQL is honoured; once connections are allowed again the listener comes back
    and the cache is used again."""
    harness = await make_harness()
    await harness.create_user("alice")
    reader, counter = counting(harness.auth)
    victim = await harness.login()
    survivor = await harness.login()
    await settled(reader, database_url)
    await warm(harness, victim, counter)
    await warm(harness, survivor, counter)
    database = make_url(database_url).database
    assert database is not None
    operator = await asyncpg.connect(pg_dsn(database_url))  # opened while allowed
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        pid = await _listener_pid(admin, database)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

        async def down() -> bool:
            return not await reader._current()

        await eventually(down, "the cache to stop on the listener's loss", 30)
        assert len(reader.cache) == 0
        for _ in range(3):
            reads = counter.bearer
            assert (await me(harness, survivor)).status_code == 200
            assert counter.bearer == reads + 1  # not cached: read every time
        assert len(reader.cache) == 0
        await operator.execute(
            "UPDATE auth_sessions SET revoked_at = now() WHERE id = $1", sid(victim)
        )
        assert (await me(harness, victim)).status_code == 401
        assert not await reader._current()  # still down: the database refuses connections

        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await eventually(reader._current, "the listener to come back", 30)
        assert (await me(harness, victim)).status_code == 401
        await warm(harness, survivor, counter)  # the cache serves again
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
        await operator.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # LISTEN
async def test_a_terminated_listener_stops_the_cache_before_the_next_ping(
    make_harness: MakeHarness,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pings an hour apart make the point without timing: after the listener's backend is
    gone, a revocation by SQL must still be honoured (the cache no longer used)."""
    monkeypatch.setattr(session_cache, "PING_SECONDS", 3600.0)
    harness = await make_harness()
    await harness.create_user("alice")
    reader, counter = counting(harness.auth)
    victim = await harness.login()
    await settled(reader, database_url)
    await warm(harness, victim, counter)
    database = make_url(database_url).database
    assert database is not None
    admin = await asyncpg.connect(pg_dsn(database_url))
    try:
        pid = await _listener_pid(admin, database)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:
            found = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            )
            return bool(found == 0)

        await eventually(gone, "the listener's backend to exit")
        await admin.execute(
            "UPDATE auth_sessions SET revoked_at = now() WHERE id = $1", sid(victim)
        )

        async def honoured() -> bool:
            return (await me(harness, victim)).status_code == 401

        await eventually(honoured, "the revocation to be honoured")
    finally:
        await admin.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # LISTEN
async def test_a_payload_that_is_no_user_id_empties_the_whole_cache(
    make_harness: MakeHarness, database_url: str
) -> None:
    """A NOTIFY whose payload is not a user id (what a statement-level trigger could send)
    drops every entry, not only one user's."""
    harness = await make_harness()
    await harness.create_user("alice")
    await harness.create_user("bob")
    reader, counter = counting(harness.auth)
    alice = await harness.login("alice")
    bob = await harness.login("bob")
    await settled(reader, database_url)
    await warm(harness, alice, counter)
    await warm(harness, bob, counter)
    assert len(reader.cache) == 2
    await sql(database_url, f"NOTIFY {CHANNEL}, 'everyone'")

    async def emptied() -> bool:
        return len(reader.cache) == 0

    await eventually(emptied, "the cache to be emptied")


async def _listeners(database_url: str) -> int:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return len(await admin.fetch(LISTENERS, make_url(database_url).database))
    finally:
        await admin.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # LISTEN
async def test_shutdown_closes_the_listener(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """One LISTEN connection per process while it runs, none left after ``Auth.shutdown``."""
    auth = Auth(make_settings())
    await migrate.upgrade(auth.core.engine)
    await auth.startup()
    try:
        reader = auth.core.session_reader
        assert isinstance(reader, CachedReader)
        await eventually(reader._current, "the listener to be up")
        assert await _listeners(database_url) == 1
    finally:
        await auth.shutdown()

    async def closed() -> bool:
        return await _listeners(database_url) == 0

    await eventually(closed, "the LISTEN connection to close")


# --- 5. SessionCache ------------------------------------------------------------------------------


def row(user_id: int, session_id: int = 0, expires_at: datetime = FAR) -> LiveRow:
    return LiveRow(session_id, expires_at, {"id": user_id})


def test_the_cache_keeps_at_most_size_entries_least_recently_used_dropped() -> None:
    cache = SessionCache(3)
    for key in (1, 2, 3):
        cache.put(key, row(key), cache.generation)
    assert cache.get(1, NOW) is not None  # 1 used: 2 is now the least recently used
    cache.put(4, row(4), cache.generation)
    cache.put(5, row(5), cache.generation)
    assert len(cache) == 3
    assert [key for key in (1, 2, 3, 4, 5) if cache.get(key, NOW) is not None] == [1, 4, 5]
    assert set(cache._by_user) == {1, 4, 5}


def test_an_answer_read_before_a_drop_is_not_stored_after_it() -> None:
    """The race: a request reads a session, a change drops the user meanwhile, and the request
    then stores what it read. ``put`` with the generation seen before the read stores nothing."""
    cache = SessionCache(10)
    before = cache.generation
    cache.forget_user(1)  # a notification arriving during the read
    cache.put(7, row(1), before)
    assert len(cache) == 0 and cache.get(7, NOW) is None
    before = cache.generation
    cache.clear()
    cache.put(7, row(1), before)
    assert len(cache) == 0
    cache.put(7, row(1), cache.generation)  # read after the drop: kept
    assert cache.get(7, NOW) == row(1)


def test_forget_user_drops_only_that_users_bearer_and_cookie_entries() -> None:
    cache = SessionCache(10)
    entries: dict[Hashable, LiveRow] = {
        10: row(1, 10),
        "cookie-hash-a": row(1, 11),
        20: row(2, 20),
        "cookie-hash-b": row(2, 21),
    }
    for key, value in entries.items():
        cache.put(key, value, cache.generation)
    generation = cache.generation
    cache.forget_user(1)
    assert cache.generation > generation
    assert cache.get(10, NOW) is None and cache.get("cookie-hash-a", NOW) is None
    assert cache.get(20, NOW) == entries[20]
    assert cache.get("cookie-hash-b", NOW) == entries["cookie-hash-b"]
    assert set(cache._by_user) == {2}
    cache.forget_user(99)  # nobody's: nothing else goes
    assert len(cache) == 2


def test_an_entry_ends_with_its_session() -> None:
    cache = SessionCache(10)
    expires = NOW + timedelta(hours=1)
    cache.put(1, row(1, 1, expires), cache.generation)
    assert cache.get(1, expires - timedelta(microseconds=1)) is not None
    assert cache.get(1, expires) is None
    assert len(cache) == 0 and cache._by_user == {}


def test_no_entry_is_used_after_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(session_cache, "time", SimpleNamespace(monotonic=lambda: clock.now))
    cache = SessionCache(10)
    cache.put(1, row(1), cache.generation)
    clock.now += MAX_AGE_SECONDS
    assert cache.get(1, NOW) is not None  # exactly MAX_AGE_SECONDS old: still young enough
    clock.now += 0.001
    assert cache.get(1, NOW) is None
    assert len(cache) == 0 and cache._by_user == {}
    cache.put(1, row(1), cache.generation)  # stored again: young again
    assert cache.get(1, NOW) is not None


def test_a_cache_of_size_zero_stores_nothing() -> None:
    cache = SessionCache(0)
    cache.put(1, row(1), cache.generation)
    assert len(cache) == 0 and cache.get(1, NOW) is None and cache._by_user == {}


def test_memory_is_bounded_by_the_size() -> None:
    """20,000 sessions of 7,000 users through a cache of 1,000: 1,000 entries, the newest, and
    the per-user index holds no key that is not an entry."""
    cache = SessionCache(1000)
    for n in range(20_000):
        key: Hashable = n if n % 2 else f"cookie-{n}"
        cache.put(key, row(n % 7000, n), cache.generation)
    assert len(cache) == 1000
    indexed = [key for keys in cache._by_user.values() for key in keys]
    assert len(indexed) == len(set(indexed)) == 1000
    assert set(indexed) == set(cache._entries)
    assert len(cache._by_user) <= 1000
    assert cache.get(19_999, NOW) is not None and cache.get(1, NOW) is None


class Model:
    """What SessionCache should hold: an ordered dict, oldest use first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[Hashable, LiveRow] = OrderedDict()

    def put(self, key: Hashable, value: LiveRow) -> None:
        if self.size == 0:
            return
        self.entries.pop(key, None)
        self.entries[key] = value
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def get(self, key: Hashable) -> LiveRow | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key]

    def forget_user(self, user_id: int) -> None:
        for key in [k for k, v in self.entries.items() if v.user["id"] == user_id]:
            del self.entries[key]


KEYS = st.one_of(st.integers(0, 6), st.sampled_from(["a", "b", "c"]))
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.integers(1, 3), st.booleans()),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("forget_user"), st.integers(1, 3)),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 4), operations=OPERATIONS)
def test_the_cache_behaves_like_a_bounded_lru_dict(
    size: int, operations: list[tuple[Any, ...]]
) -> None:
    cache = SessionCache(size)
    model = Model(size)
    for operation in operations:
        match operation:
            case ("put", key, user_id, stale):
                value = row(user_id)
                if stale and cache.generation > 0:  # read before a drop: nothing stored
                    cache.put(key, value, cache.generation - 1)
                else:
                    cache.put(key, value, cache.generation)
                    model.put(key, value)
            case ("get", key):
                assert cache.get(key, NOW) == model.get(key)
            case ("forget_user", user_id):
                cache.forget_user(user_id)
                model.forget_user(user_id)
            case ("clear",):
                cache.clear()
                model.entries.clear()
        assert list(cache._entries) == list(model.entries)
        assert len(cache) == len(model.entries) <= size
        by_user: dict[int, set[Hashable]] = {}
        for key, value in model.entries.items():
            by_user.setdefault(value.user["id"], set()).add(key)
        assert cache._by_user == by_user


# --- CachedReader: the race through the reader ---------------------------------------------------


class ScriptedReader:
    """A native reader answering from a dict; ``during_read`` runs while a read is in flight."""

    def __init__(self, rows: dict[int, LiveRow]) -> None:
        self.rows = rows
        self.reads = 0
        self.during_read: Callable[[], None] = lambda: None

    async def bearer_row(self, session_id: int, user_id: int, now: datetime) -> LiveRow | None:
        self.reads += 1
        self.during_read()
        found = self.rows.get(session_id)
        return found if found is not None and found.user["id"] == user_id else None

    async def cookie_row(self, cookie_hash: str, now: datetime) -> LiveRow | None:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


async def test_a_drop_during_a_read_keeps_that_read_out_of_the_cache() -> None:
    # As Auth.startup's first queries would: LiveRow.new_user needs configured mappers.
    configure_mappers()
    cache = SessionCache(10)
    native = ScriptedReader({5: row(1, 5)})
    reader = CachedReader(native, cache, Silent())
    native.during_read = lambda: cache.forget_user(1)  # the user changed meanwhile
    assert await reader.live_user(5, 1, NOW) is not None
    assert len(cache) == 0
    native.during_read = lambda: None
    assert await reader.live_user(5, 1, NOW) is not None
    assert await reader.live_user(5, 1, NOW) is not None
    assert native.reads == 2  # the first answer was not kept, the second was (a hit after)
    assert len(cache) == 1
    assert await reader.live_user(5, 2, NOW) is None  # not user 2's: read, and refused
    assert native.reads == 3


# --- 6. SQLiteFeed ------------------------------------------------------------------------------


async def _sqlite_feed(tmp_path: Path) -> tuple[SQLiteFeed, SessionCache, Path]:
    """A feed on a fresh migrated SQLite file, caught up, its cache holding users 1 and 2."""
    path = tmp_path / "feed.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    reader = SQLiteReader(make_url(f"sqlite:///{path}"))
    cache = SessionCache(10)
    feed = SQLiteFeed(reader, cache)
    _changes(path, "INSERT INTO auth_changes (user_id) VALUES (9)")
    assert await feed.ready()  # first look: starts after the existing rows
    cache.put(1, row(1, 1), cache.generation)
    cache.put(2, row(2, 2), cache.generation)
    return feed, cache, path


def _changes(path: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        for statement in statements:
            connection.execute(statement)


async def test_sqlite_feed_drops_only_the_users_named_by_new_rows(tmp_path: Path) -> None:
    feed, cache, path = await _sqlite_feed(tmp_path)
    try:
        assert await feed.ready() and len(cache) == 2  # nothing committed: nothing dropped
        _changes(path, "INSERT INTO auth_changes (user_id) VALUES (1)")
        assert await feed.ready()
        assert cache.get(1, NOW) is None and cache.get(2, NOW) is not None
    finally:
        await feed._reader.close()


async def test_sqlite_feed_clears_everything_on_a_gap_in_the_ids(tmp_path: Path) -> None:
    """Rows pruned past what this process saw: the next id it reads is not the one it expected,
    so it cannot know whom the missing rows named, and clears the cache."""
    feed, cache, path = await _sqlite_feed(tmp_path)
    try:
        _changes(
            path,
            "INSERT INTO auth_changes (user_id) VALUES (1)",
            "INSERT INTO auth_changes (user_id) VALUES (3)",
            "DELETE FROM auth_changes WHERE user_id = 1",  # pruned before this process looked
        )
        generation = cache.generation
        assert await feed.ready()
        assert len(cache) == 0  # user 2's entry too: not named, but it might have been
        assert cache.generation > generation
    finally:
        await feed._reader.close()


async def test_sqlite_feed_clears_everything_when_every_unseen_row_was_pruned(
    tmp_path: Path,
) -> None:
    feed, cache, path = await _sqlite_feed(tmp_path)
    try:
        _changes(
            path,
            "INSERT INTO auth_changes (user_id) VALUES (1)",
            "DELETE FROM auth_changes",  # a prune taking every row, the unseen one too
        )
        assert await feed.ready()
        assert cache.get(1, NOW) is None
    finally:
        await feed._reader.close()


# --- 7. when the cache is off -------------------------------------------------------------------


def _settings(url: str, **values: Any) -> Settings:
    return Settings(_env_file=None, database_url=url, secret_key=SECRET, **values)


def test_effective_cache_size() -> None:
    """PostgreSQL without a LISTEN of its own (PgBouncer's transaction pooling, or no room in a
    pool of 2) caches nothing; SQLite keeps the setting; a setting of 0 is off everywhere."""
    pg = "postgresql+asyncpg://postgres@127.0.0.1:5432/x"
    lite = "sqlite+aiosqlite:///x.db"
    assert effective_cache_size(_settings(pg), sqlite=False) == 10_000
    assert effective_cache_size(_settings(pg, database_pool_size=3), sqlite=False) == 10_000
    assert effective_cache_size(_settings(pg, session_cache_size=500), sqlite=False) == 500
    assert effective_cache_size(_settings(pg, database_pgbouncer=True), sqlite=False) == 0
    assert effective_cache_size(_settings(pg, database_pool_size=2), sqlite=False) == 0
    assert effective_cache_size(_settings(pg, session_cache_size=0), sqlite=False) == 0
    assert effective_cache_size(_settings(lite, database_pool_size=2), sqlite=True) == 10_000
    assert effective_cache_size(_settings(lite, session_cache_size=77), sqlite=True) == 77
    assert effective_cache_size(_settings(lite, session_cache_size=0), sqlite=True) == 0


OFF: dict[str, dict[str, Any]] = {
    "size_0": {"session_cache_size": 0},
    "pgbouncer": {"database_pgbouncer": True},
    "pool_of_2": {"database_pool_size": 2},
}


@pytest.mark.parametrize("name", list(OFF))
async def test_with_the_cache_off_every_request_reads(
    make_harness: MakeHarness, database_url: str, name: str
) -> None:
    """AUTHDB_SESSION_CACHE_SIZE=0 anywhere, and PgBouncer or a pool of 2 on PostgreSQL: no
    feed, no LISTEN connection, every request reads. (SQLite ignores the last two: cached.)"""
    harness = await make_harness(**OFF[name])
    await harness.create_user("alice")
    reader, counter = counting(harness.auth)
    tokens = await harness.login()
    off = name == "size_0" or not is_sqlite(database_url)
    for n in range(1, 4):
        assert (await me(harness, tokens)).status_code == 200
        assert counter.bearer == (n if off else 1)
    assert len(reader.cache) == (0 if off else 1)
    assert (reader._feed is None) == off
    if not is_sqlite(database_url):
        assert await _listeners(database_url) == 0
