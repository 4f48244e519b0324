"""The common sign-in on the native path (authdb.db.sign_in_store): what it writes, that it
skips the ORM, and that everything rarer still takes the ORM path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, func, make_url, select

from authdb.db.models import AuditEvent, AuthSession, LoginFailure, RefreshToken, User
from authdb.db.sign_in_store import AUDIT_CHAIN_LOCK
from authdb.services import audit, audit_chain, lockout
from authdb.tokens import hash_opaque_token
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
WRONG = "not the right password"


@contextmanager
def orm_statements(harness: Harness) -> Iterator[list[str]]:
    """The SQL statements the engine (the ORM's path) runs meanwhile."""
    seen: list[str] = []
    engine = harness.auth.core.engine.sync_engine

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def after_the_hash(harness: Harness, action: Callable[[], Awaitable[object]]) -> None:
    """Run ``action`` after each password check's hash, before its sign-in writes: what a
    concurrent request would commit meanwhile."""
    core = harness.auth.core
    verify = core.hasher.verify

    async def verify_then_act(password: str, hashed: str | None) -> Any:
        result = await verify(password, hashed)
        await action()
        return result

    core.hasher.verify = verify_then_act  # type: ignore[method-assign]


def lock_during_the_hash(harness: Harness, user_id: int, *, failures: int) -> None:
    """Make the next password checks count ``failures`` failures for the user (which lock the
    account at ``login_max_failures``) while the hash runs, as a concurrent burst would."""
    core = harness.auth.core
    settings = core.settings
    locking = timedelta(minutes=settings.login_lockout_minutes)

    async def count_failures() -> None:
        async with core.sessionmaker.begin() as db:
            for _ in range(failures):
                await lockout.record_failure(
                    db,
                    f"user:{user_id}",
                    core.clock(),
                    max_failures=settings.login_max_failures,
                    lockout=locking,
                )

    after_the_hash(harness, count_failures)


async def _token(harness: Harness, name: str = "alice", password: str = PASSWORD) -> Any:
    return await harness.client.post("/token", data={"username": name, "password": password})


async def _count(harness: Harness, model: Any, *where: Any) -> int:
    async with harness.auth.core.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_a_right_password_opens_the_session_without_the_orm(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(prune_every_n_logins=1_000_000)
    user = await harness.create_user()
    with orm_statements(harness) as seen:
        response = await _token(harness)
    assert response.status_code == 200, response.text
    assert seen == []
    body = response.json()
    # What the ORM path wrote is all there: the session, its refresh token, the stamp.
    async with harness.auth.core.sessionmaker() as db:
        stored = await db.get(User, user.id)
        assert stored is not None and stored.last_login_at is not None
        session = await db.scalar(select(AuthSession).where(AuthSession.user_id == user.id))
        assert session is not None and session.cookie_hash is None
        assert session.expires_at > session.created_at == stored.last_login_at
        token = await db.scalar(
            select(RefreshToken).where(
                RefreshToken.token_hash == hash_opaque_token(body["refresh_token"])
            )
        )
        assert token is not None and token.session_id == session.id
        row = await db.scalar(select(AuditEvent).where(AuditEvent.event == "login_ok"))
    assert row is not None
    assert row.detail == {"session_id": session.id, "mfa": None}
    assert row.user_id == user.id
    # The tokens work, and the new session can be refreshed and revoked.
    me = await harness.client.get(
        "/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200 and me.json()["last_login_at"] is not None
    refreshed = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert (await audit_chain.verify(harness.auth.core)).ok


async def test_a_right_password_forgives_the_failures_before_it(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=3)
    user = await harness.create_user()
    for _ in range(2):
        assert (await _token(harness, password=WRONG)).status_code == 401
    assert await _count(harness, LoginFailure, LoginFailure.key == f"user:{user.id}") == 1
    assert (await _token(harness)).status_code == 200
    assert await _count(harness, LoginFailure, LoginFailure.key == f"user:{user.id}") == 0
    # A fresh run: two more failures do not lock (the count started again).
    for _ in range(2):
        assert (await _token(harness, password=WRONG)).status_code == 401
    assert (await _token(harness)).status_code == 200


async def test_a_lock_set_while_the_password_is_checked_refuses_it(
    make_harness: MakeHarness,
) -> None:
    """Failures of a concurrent burst that lock the account during this attempt's hash win:
    the native transaction finds the lock, and the ORM path answers 429 and audits it."""
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=15)
    user = await harness.create_user()
    lock_during_the_hash(harness, user.id, failures=2)
    response = await _token(harness)
    assert response.status_code == 429, response.text
    assert await _count(harness, AuthSession) == 0
    assert await _count(harness, AuditEvent, AuditEvent.event == "login_locked") == 1
    assert await _count(harness, AuditEvent, AuditEvent.event == "login_ok") == 0


async def test_a_user_deleted_while_the_password_is_checked_gets_no_session(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness()
    user = await harness.create_user()
    after_the_hash(harness, lambda: harness.auth.users.delete(user.id))
    response = await _token(harness)
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "Incorrect username or password"
    assert await _count(harness, AuthSession) == 0
    assert await _count(harness, AuditEvent, AuditEvent.event == "login_ok") == 0


async def test_rarer_cases_take_the_orm_path(make_harness: MakeHarness) -> None:
    """A rehash (changed argon2 cost) and a refused account are written through the ORM."""
    harness = await make_harness()
    await harness.create_user()
    await harness.create_user("bob", disabled=True)
    with orm_statements(harness) as seen:
        assert (await _token(harness, "bob")).status_code == 400
    assert any("audit_events" in statement for statement in seen)
    assert await _count(harness, AuditEvent, AuditEvent.event == "login_refused") == 1
    stronger = await make_harness(password_hash_time_cost=2)
    with orm_statements(stronger) as seen:
        assert (await _token(stronger)).status_code == 200
    assert any(statement.startswith("UPDATE users SET hashed_password") for statement in seen)
    assert (await audit_chain.verify(harness.auth.core)).ok


async def test_subscribers_and_callbacks_hear_of_the_sign_in(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    user = await harness.create_user()
    heard: list[audit.SecurityEvent] = []
    called: list[Any] = []
    unsubscribe = audit.subscribe(heard.append)

    @harness.auth.on("login")
    async def on_login(snapshot: Any, client: Any) -> None:
        called.append((snapshot, client))

    try:
        response = await _token(harness)
        assert response.status_code == 200
        await harness.auth.hooks.drain()
    finally:
        unsubscribe()
    logins = [item for item in heard if item.name == "login_ok"]
    async with harness.auth.core.sessionmaker() as db:
        session_id = await db.scalar(select(AuthSession.id))
    assert [(item.user_id, item.detail) for item in logins] == [
        (user.id, {"session_id": session_id, "mfa": None})
    ]
    assert len(called) == 1
    snapshot, _client = called[0]
    assert snapshot.id == user.id and snapshot.last_login_at is not None


async def test_the_trail_stays_one_chain_under_concurrent_sign_ins(
    make_harness: MakeHarness,
) -> None:
    """Native sign-ins and ORM-recorded events interleave on one hash chain."""
    harness = await make_harness(login_max_failures=1000)
    for name in ("alice", "bob", "carol"):
        await harness.create_user(name)
    attempts = [
        _token(harness, name, PASSWORD if i % 3 else WRONG)
        for i, name in enumerate(["alice", "bob", "carol"] * 6)
    ]
    statuses = sorted(r.status_code for r in await asyncio.gather(*attempts))
    assert statuses == [200] * 12 + [401] * 6
    report = await audit_chain.verify(harness.auth.core)
    assert report.ok, report
    assert await _count(harness, AuditEvent, AuditEvent.event == "login_ok") == 12
    assert report.count == await _count(harness, AuditEvent)


@pytest.mark.parametrize("name", ["alice", "ALICE", "alice@example.com", "Alice@Example.COM"])
async def test_usernames_and_emails_are_matched_as_before(
    make_harness: MakeHarness, name: str
) -> None:
    harness = await make_harness()
    await harness.create_user()
    assert (await _token(harness, name)).status_code == 200


async def test_a_sign_in_prunes_ended_sessions_on_its_turn(make_harness: MakeHarness) -> None:
    """``AUTHDB_PRUNE_EVERY_N_LOGINS=1``: every sign-in, native ones included, prunes."""
    harness = await make_harness(prune_every_n_logins=1, refresh_token_expire_days=1)
    await harness.create_user()
    core = harness.auth.core
    assert (await _token(harness)).status_code == 200
    real_clock = core.clock
    core.clock = lambda: real_clock() + timedelta(days=30)  # the first session has ended
    try:
        assert (await _token(harness)).status_code == 200
    finally:
        core.clock = real_clock
    assert await _count(harness, AuthSession) == 1  # the ended one pruned, the new one kept


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_chain_lock_is_taken_after_the_user_row_lock(
    make_harness: MakeHarness, database_url: str
) -> None:
    """On PostgreSQL the sign-in takes the audit chain's lock inside its one statement, but
    after the user's row lock, as the ORM path takes it: while another transaction holds the
    chain, the sign-in waits for it already holding the user's row (no lock-order deadlock)."""
    harness = await make_harness()
    user = await harness.create_user()
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    holder, probe = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", AUDIT_CHAIN_LOCK)
        login = asyncio.create_task(_token(harness))
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        for _ in range(3000):  # polls for the state, not a deadline: at most 30 s
            if await probe.fetchval(waiting):
                break
            assert not login.done(), login.result().text
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the sign-in never waited for the audit chain's lock")
        async with probe.transaction():
            with pytest.raises(asyncpg.LockNotAvailableError):
                await probe.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE NOWAIT", user.id)
        await holder.execute("SELECT pg_advisory_unlock($1)", AUDIT_CHAIN_LOCK)
        assert (await login).status_code == 200
    finally:
        await holder.close()
        await probe.close()
    assert (await audit_chain.verify(harness.auth.core)).ok


async def _chaining_thread(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of the thread that chains a native sign-in's audit rows (inside its
    transaction, on the connection that writes them)."""
    names: list[str] = []
    chained = audit_chain.chained

    def recording(rows: Any, seq: int, prev: str | None) -> Any:
        names.append(threading.current_thread().name)
        return chained(rows, seq, prev)

    monkeypatch.setattr(audit_chain, "chained", recording)
    assert (await _token(harness)).status_code == 200
    [name] = names
    return name


async def test_the_write_runs_off_the_event_loop(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's writer thread, or PostgreSQL's connection on a loop of its own: the sign-in's
    statements never wait for turns of the application's loop."""
    harness = await make_harness()
    await harness.create_user()
    assert (await _chaining_thread(harness, monkeypatch)).startswith("authdb-sign-in")
    # Again after a restart: the thread and its connection come back.
    await harness.auth.shutdown()
    await harness.auth.startup()
    assert (await _chaining_thread(harness, monkeypatch)).startswith("authdb-sign-in")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_small_pool_lends_the_session_check_s_connections_to_the_write(
    make_harness: MakeHarness, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With AUTHDB_DATABASE_POOL_SIZE too small to spare a connection, the write borrows the
    session check's pool on the application's loop, and still works."""
    harness = await make_harness(database_pool_size=4)
    await harness.create_user()
    assert (await _chaining_thread(harness, monkeypatch)) == threading.main_thread().name
    assert (await audit_chain.verify(harness.auth.core)).ok
