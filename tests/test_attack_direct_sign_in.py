"""Attacks on the native sign-in path (authdb.db.sign_in_store, authdb.services.direct_sign_in):
where it must behave exactly as the ORM path did, and where it must not be wrong."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from authdb.db.models import AuditEvent, AuthSession, LoginFailure, RefreshToken, User
from authdb.names import login_key
from authdb.services import audit, audit_chain
from tests.conftest import PASSWORD, Harness
from tests.netfaults import TcpProxy
from tests.test_direct_sign_in import after_the_hash, lock_during_the_hash, orm_statements
from tests.test_lockout import FrozenClock

MakeHarness = Callable[..., Awaitable[Harness]]
WRONG = "not the right password"
RENAMED = "Renamed Meanwhile"


async def _token(
    harness: Harness,
    name: str = "alice",
    password: str = PASSWORD,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await harness.client.post(
        "/token", data={"username": name, "password": password}, headers=headers
    )


async def _count(harness: Harness, model: Any, *where: Any) -> int:
    async with harness.auth.core.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _events(harness: Harness, name: str | None = None) -> list[AuditEvent]:
    async with harness.auth.core.sessionmaker() as db:
        query = select(AuditEvent).order_by(AuditEvent.chain_seq)
        if name is not None:
            query = query.where(AuditEvent.event == name)
        return list((await db.scalars(query)).all())


async def _me(harness: Harness, access_token: str) -> httpx.Response:
    return await harness.client.get(
        "/users/me", headers={"Authorization": f"Bearer {access_token}"}
    )


# --- who a login name names -----------------------------------------------------------------


async def test_a_username_wins_over_another_users_email(make_harness: MakeHarness) -> None:
    """A username equal to another user's email key (possible through an import or an old
    schema): the username's owner is the one signed in, as find_by_login decides."""
    harness = await make_harness()
    alice = await harness.create_user("alice")
    # bob's row was created first, so a scan in id order meets the email match first.
    bob = await harness.create_user("bob", password="bobs own password 123")
    async with harness.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == bob.id).values(email_key="carol"))
        await db.execute(update(User).where(User.id == alice.id).values(username_key="carol"))
    # With alice's password: alice (username) is named, not bob (email).
    response = await _token(harness, "Carol")
    assert response.status_code == 200, response.text
    me = await _me(harness, response.json()["access_token"])
    assert me.json()["id"] == alice.id
    # bob's password does not open alice's account, and counts against alice.
    assert (await _token(harness, "carol", "bobs own password 123")).status_code == 401
    assert await _count(harness, LoginFailure, LoginFailure.key == f"user:{alice.id}") == 1
    assert await _count(harness, LoginFailure, LoginFailure.key == f"user:{bob.id}") == 0


@pytest.mark.parametrize(
    ("username", "typed"),
    [
        ("alice", "\uff21\uff2c\uff29\uff23\uff25"),  # fullwidth: NFKC
        ("strasse", "STRAßE"),  # ß folds to ss
        ("alice", "  alice  "),  # surrounding spaces
        ("ǆemal", "ǅEMAL"),  # title-case digraph
    ],
)
async def test_folded_login_names_find_the_account(
    make_harness: MakeHarness, username: str, typed: str
) -> None:
    harness = await make_harness()
    user = await harness.create_user(username)
    response = await _token(harness, typed)
    assert response.status_code == 200, response.text
    assert (await _me(harness, response.json()["access_token"])).json()["id"] == user.id


async def test_long_unknown_names_share_the_truncated_counter(make_harness: MakeHarness) -> None:
    """Names that match nobody count on ``name:<folded>`` cut to 380 characters: two long
    names differing only past that point are one counter, checked before the hash."""
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=15)
    stem = "x" * 380
    first, second = stem + "a" * 500, stem + "B" * 600
    assert (await _token(harness, first, WRONG)).status_code == 401
    assert (await _token(harness, second, WRONG)).status_code == 401
    calls: list[str | None] = []
    verify = harness.auth.core.hasher.verify

    async def counting(password: str, hashed: str | None) -> Any:
        calls.append(hashed)
        return await verify(password, hashed)

    harness.auth.core.hasher.verify = counting  # type: ignore[method-assign]
    locked = await _token(harness, stem + "zzz", WRONG)
    assert locked.status_code == 429
    assert calls == []  # refused before any hash
    async with harness.auth.core.sessionmaker() as db:
        keys = list((await db.scalars(select(LoginFailure.key))).all())
    assert keys == [f"name:{login_key(stem)}"]
    assert len(await _events(harness, "login_locked")) == 1


async def test_a_long_name_of_a_real_user_is_not_confused_with_a_nobody(
    make_harness: MakeHarness,
) -> None:
    """A 380-character prefix lock on a nobody never touches a real account's counter."""
    harness = await make_harness(login_max_failures=1, login_lockout_minutes=15)
    await harness.create_user("alice")
    assert (await _token(harness, "alice" + "!" * 1000, WRONG)).status_code == 401
    assert (await _token(harness, "alice")).status_code == 200


@pytest.mark.parametrize("name", ["ali\x00ce", "alice\u2028", "\u202ealice", "alice\x1b[0m"])
async def test_control_characters_are_refused_before_any_lookup(
    make_harness: MakeHarness, name: str
) -> None:
    harness = await make_harness()
    await harness.create_user("alice")
    calls: list[Any] = []
    subject = harness.auth.core.sign_in.subject

    async def spy(*args: Any) -> Any:
        calls.append(args)
        return await subject(*args)

    store: Any = harness.auth.core.sign_in
    store.subject = spy
    response = await _token(harness, name)
    assert response.status_code in (400, 422), response.text
    assert calls == []
    assert await _count(harness, AuthSession) == 0


# --- lockout ---------------------------------------------------------------------------------


async def test_an_expired_lock_is_forgiven_by_the_right_password(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=15)
    clock = FrozenClock()
    harness.auth.core.clock = clock
    user = await harness.create_user()
    for _ in range(2):
        assert (await _token(harness, password=WRONG)).status_code == 401
    assert (await _token(harness)).status_code == 429
    clock.advance(minutes=15, seconds=1)
    with orm_statements(harness) as seen:
        response = await _token(harness)
    assert response.status_code == 200, response.text
    assert not any(s.lstrip().upper().startswith("INSERT") for s in seen)  # native path
    assert await _count(harness, LoginFailure, LoginFailure.key == f"user:{user.id}") == 0
    # A fresh run: one failure does not lock again.
    assert (await _token(harness, password=WRONG)).status_code == 401
    assert (await _token(harness)).status_code == 200


async def test_a_lock_set_during_the_hash_refuses_the_browser_sign_in_too(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=15)
    user = await harness.create_user()
    lock_during_the_hash(harness, user.id, failures=2)
    page = await _login_page(harness)
    response = await _login_form(harness, page, "alice", PASSWORD)
    assert response.status_code == 429, response.text
    assert "authdb_session" not in response.cookies
    assert await _count(harness, AuthSession) == 0
    assert [e.user_id for e in await _events(harness, "login_locked")] == [user.id]
    assert await _events(harness, "login_ok") == []
    # The lock stands: it was not forgiven by the refused attempt.
    assert await _count(harness, LoginFailure, LoginFailure.key == f"user:{user.id}") == 1


async def test_mfa_users_never_take_the_native_path(make_harness: MakeHarness) -> None:
    """A right password alone forgives nothing for an MFA user and opens no session."""
    harness = await make_harness(login_max_failures=3)
    user = await harness.create_user()
    async with harness.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == user.id).values(mfa_enabled=True))
    assert (await _token(harness, password=WRONG)).status_code == 401
    response = await _token(harness)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "mfa_required"
    assert await _count(harness, AuthSession) == 0
    assert await _count(harness, LoginFailure, LoginFailure.key == f"user:{user.id}") == 1
    assert len(await _events(harness, "login_mfa_required")) == 1
    assert await _events(harness, "login_ok") == []


@pytest.mark.parametrize("refusal", ["disabled", "unverified"])
async def test_refused_accounts_get_no_session(make_harness: MakeHarness, refusal: str) -> None:
    harness = await make_harness(require_verified_email=True)
    if refusal == "disabled":
        await harness.create_user(disabled=True)
    else:
        await harness.create_user(is_verified=False)
    response = await _token(harness)
    assert response.status_code == 400, response.text
    assert await _count(harness, AuthSession) == 0
    assert len(await _events(harness, "login_refused")) == 1
    assert await _events(harness, "login_ok") == []
    async with harness.auth.core.sessionmaker() as db:
        assert await db.scalar(select(User.last_login_at)) is None


# --- what is written ---------------------------------------------------------------------------


async def test_the_native_rows_match_the_orm_paths(make_harness: MakeHarness) -> None:
    """A sign-in through the ORM (a rehash sends it there) and one on the native path write
    the same session and audit row shapes: user agent cut to 512, address, detail."""
    # The user's hash is made with time cost 1; a harness at cost 2 rehashes (ORM path).
    harness = await make_harness()
    user = await harness.create_user()
    stronger = await make_harness(password_hash_time_cost=2)
    agent = "Mozilla/5.0 " + "a" * 600
    headers = {"User-Agent": agent}
    with orm_statements(stronger) as seen:
        first = await _token(stronger, headers=headers)
    assert first.status_code == 200, first.text
    assert any("hashed_password" in s for s in seen)  # the ORM path
    with orm_statements(stronger) as seen:
        second = await _token(stronger, headers=headers)
    assert second.status_code == 200, second.text
    assert seen == []  # the native path
    rows = await _events(harness, "login_ok")
    assert len(rows) == 2
    orm_row, native_row = rows
    async with harness.auth.core.sessionmaker() as db:
        sessions = list((await db.scalars(select(AuthSession).order_by(AuthSession.id))).all())
        tokens = list((await db.scalars(select(RefreshToken).order_by(RefreshToken.id))).all())
    assert [t.session_id for t in tokens] == [s.id for s in sessions]

    def shape(row: AuditEvent) -> tuple[Any, ...]:
        return (row.event, row.user_id, row.actor_id, row.ip_address, row.user_agent)

    assert shape(native_row) == shape(orm_row)
    assert native_row.user_agent == agent[:512]
    assert orm_row.detail == {"session_id": sessions[0].id, "mfa": None}
    assert native_row.detail == {"session_id": sessions[1].id, "mfa": None}
    assert list(native_row.detail) == list(orm_row.detail)

    def session_shape(row: AuthSession) -> tuple[Any, ...]:
        return (
            row.user_id,
            row.user_agent,
            row.ip_address,
            row.cookie_hash,
            row.revoked_at,
            row.expires_at - row.created_at,
            row.last_used_at == row.created_at,
        )

    assert session_shape(sessions[1]) == session_shape(sessions[0])
    assert sessions[1].user_id == user.id
    report = await audit_chain.verify(harness.auth.core)
    assert report.ok, report


async def test_the_login_hook_sees_the_committed_user(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    user = await harness.create_user()
    seen: list[Any] = []

    @harness.auth.on("login")
    async def on_login(snapshot: Any, client: Any) -> None:
        seen.append((snapshot, client))

    response = await _token(harness, headers={"User-Agent": "hook-agent"})
    assert response.status_code == 200
    await harness.auth.hooks.drain()
    async with harness.auth.core.sessionmaker() as db:
        stored = await db.get(User, user.id)
    assert stored is not None
    assert len(seen) == 1
    snapshot, client = seen[0]
    assert snapshot.last_login_at == stored.last_login_at
    assert snapshot.updated_at == stored.updated_at
    assert snapshot.email == stored.email and snapshot.full_name == stored.full_name
    assert client.user_agent == "hook-agent"
    assert not hasattr(snapshot, "hashed_password")


async def test_the_login_hook_sees_a_change_committed_during_the_hash(
    make_harness: MakeHarness,
) -> None:
    """``@auth.on("login")`` gets the user "as the change committed them": on the ORM path the
    callback's snapshot is read after the commit, so an email changed while the password was
    hashed is the new one. The native path must give it too, not the row read before the hash."""
    harness = await make_harness()
    user = await harness.create_user()
    after_the_hash(harness, lambda: harness.auth.users.update(user.id, full_name=RENAMED))
    seen = await _login_hook_snapshots(harness)
    async with harness.auth.core.sessionmaker() as db:
        stored = await db.get(User, user.id)
    assert stored is not None and stored.full_name == RENAMED
    assert [s.full_name for s in seen] == [RENAMED]


async def test_on_the_orm_path_the_login_hook_sees_a_change_committed_during_the_hash(
    make_harness: MakeHarness,
) -> None:
    """The control for the test above: a rehash sends the sign-in through the ORM, whose
    callback reads the user after the commit."""
    first = await make_harness()
    user = await first.create_user()
    harness = await make_harness(password_hash_time_cost=2)  # rehash: the ORM path
    after_the_hash(harness, lambda: harness.auth.users.update(user.id, full_name=RENAMED))
    seen = await _login_hook_snapshots(harness)
    assert [s.full_name for s in seen] == [RENAMED]


async def _login_hook_snapshots(harness: Harness) -> list[Any]:
    """Sign alice in once; the snapshots ``@auth.on("login")`` received."""
    seen: list[Any] = []

    @harness.auth.on("login")
    async def on_login(snapshot: Any, client: Any) -> None:
        seen.append(snapshot)

    assert (await _token(harness)).status_code == 200
    await harness.auth.hooks.drain()
    return seen


async def test_subscribers_hear_exactly_what_the_trail_holds(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    await harness.create_user()
    heard: list[audit.SecurityEvent] = []
    unsubscribe = audit.subscribe(heard.append)
    try:
        response = await _token(harness, headers={"User-Agent": "x" * 700})
    finally:
        unsubscribe()
    assert response.status_code == 200
    [row] = await _events(harness, "login_ok")
    [item] = [h for h in heard if h.name == "login_ok"]
    assert (item.time, item.user_id, item.ip_address, item.user_agent, item.detail) == (
        row.created_at,
        row.user_id,
        row.ip_address,
        row.user_agent,
        row.detail,
    )


async def test_no_signing_key_means_no_session_and_no_login_ok(make_harness: MakeHarness) -> None:
    """A process whose signing key does not open answers 503 at sign-in (ORM path: the token
    is made inside the transaction, so its failure rolls everything back). Nothing may be left
    behind: no session, no ``login_ok`` in the trail, no ``login`` callback."""
    harness = await make_harness()
    await harness.create_user()
    core = harness.auth.core
    assert core.codec is not None
    core.codec = dataclasses.replace(
        core.codec, keys=dataclasses.replace(core.codec.keys, signing_key=None)
    )
    called: list[Any] = []

    @harness.auth.on("login")
    async def on_login(snapshot: Any, client: Any) -> None:
        called.append(snapshot)

    response = await _token(harness)
    await harness.auth.hooks.drain()
    assert response.status_code == 503, response.text
    async with core.sessionmaker() as db:
        stamp = await db.scalar(select(User.last_login_at))
    left_behind = {
        "sessions": await _count(harness, AuthSession),
        "refresh_tokens": await _count(harness, RefreshToken),
        "login_ok": len(await _events(harness, "login_ok")),
        "login_callbacks": len(called),
        "last_login_at_stamped": stamp is not None,
    }
    assert left_behind == {
        "sessions": 0,
        "refresh_tokens": 0,
        "login_ok": 0,
        "login_callbacks": 0,
        "last_login_at_stamped": False,
    }


# --- concurrency and the chain ----------------------------------------------------------------


async def test_the_chain_holds_under_sign_ins_mixed_with_other_audited_actions(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=1000)
    names = ["alice", "bob", "carol", "dave"]
    for name in names:
        await harness.create_user(name)
    tokens = {name: await harness.login(name) for name in names}

    async def rename(name: str, n: int) -> httpx.Response:
        bearer = {"Authorization": f"Bearer {tokens[name]['access_token']}"}
        return await harness.client.patch(
            "/users/me", json={"full_name": f"{name} {n}"}, headers=bearer
        )

    async def register(n: int) -> httpx.Response:
        return await harness.client.post(
            "/register",
            json={"username": f"new{n}", "email": f"new{n}@example.com", "password": PASSWORD},
        )

    work: list[Awaitable[httpx.Response]] = []
    for i in range(8):
        for name in names:
            work.append(_token(harness, name, PASSWORD if i % 4 else WRONG))
        work.append(rename(names[i % 4], i))
        work.append(register(i))
        work.append(_token(harness, f"ghost{i}", WRONG))
    responses = await asyncio.gather(*work)
    assert all(r.status_code < 500 for r in responses)
    report = await audit_chain.verify(harness.auth.core)
    assert report.ok, report
    assert report.count == await _count(harness, AuditEvent)
    assert len(await _events(harness, "login_ok")) == 4 + 24
    seqs = [e.chain_seq for e in await _events(harness)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_known_and_unknown_names_do_the_same_database_work(
    make_harness: MakeHarness,
) -> None:
    """A wrong password for a real account and any password for a nobody: the same native
    read, then the same ORM statements (a counted failure and its audit row)."""
    harness = await make_harness(login_max_failures=1000)
    await harness.create_user()
    reads: list[tuple[Any, ...]] = []
    subject = harness.auth.core.sign_in.subject

    async def spy(*args: Any) -> Any:
        reads.append(args)
        return await subject(*args)

    store: Any = harness.auth.core.sign_in
    store.subject = spy

    def shape(statements: list[str]) -> list[str]:
        return [re.sub(r"\$\d+|\?", "?", s) for s in statements]

    with orm_statements(harness) as known:
        assert (await _token(harness, "alice", WRONG)).status_code == 401
    with orm_statements(harness) as unknown:
        assert (await _token(harness, "nobody", WRONG)).status_code == 401
    assert len(reads) == 2
    assert shape(known) == shape(unknown)


async def test_a_user_deleted_during_the_hash_on_the_page_gets_no_session(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness()
    user = await harness.create_user()
    core = harness.auth.core
    after_the_hash(harness, lambda: harness.auth.users.delete(user.id))
    page = await _login_page(harness)
    response = await _login_form(harness, page, "alice", PASSWORD)
    assert response.status_code == 401, response.text
    assert await _count(harness, AuthSession) == 0
    assert await _events(harness, "login_ok") == []
    report = await audit_chain.verify(core)
    assert report.ok, report


# --- the sign-in page ---------------------------------------------------------------------------


async def _login_page(harness: Harness) -> httpx.Response:
    page = await harness.client.get("/login")
    assert page.status_code == 200, page.text
    return page


async def _login_form(
    harness: Harness, page: httpx.Response, username: str, password: str
) -> httpx.Response:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    data = {"username": username, "password": password}
    if match:
        data["csrf_token"] = match.group(1)
    return await harness.client.post("/login", data=data)


async def test_the_sign_in_page_opens_a_cookie_session_natively(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=3)
    user = await harness.create_user()
    assert (await _token(harness, password=WRONG)).status_code == 401
    page = await _login_page(harness)
    with orm_statements(harness) as seen:
        response = await _login_form(harness, page, "ALICE@example.com", PASSWORD)
    assert response.status_code in (302, 303), response.text
    assert not any(s.lstrip().upper().startswith("INSERT INTO AUTH_SESSIONS") for s in seen)
    async with harness.auth.core.sessionmaker() as db:
        session = await db.scalar(select(AuthSession))
        assert session is not None
        assert session.cookie_hash is not None and session.user_id == user.id
        assert await db.scalar(select(func.count()).select_from(RefreshToken)) == 0
    [row] = await _events(harness, "login_ok")
    assert row.detail == {"session_id": session.id, "mfa": None}
    assert await _count(harness, LoginFailure) == 0
    account = await harness.client.get("/account")
    assert account.status_code == 200, account.text
    assert "alice" in account.text


# --- the session cache ----------------------------------------------------------------------


async def test_a_cached_session_sees_the_next_sign_ins_stamp(make_harness: MakeHarness) -> None:
    """/users/me through a cached session shows ``last_login_at`` of a later sign-in (the
    stamp is an UPDATE of users, which the triggers announce), as on the ORM path."""
    harness = await make_harness(session_cache_size=100)
    clock = FrozenClock()
    harness.auth.core.clock = clock
    await harness.create_user()
    first = (await _token(harness)).json()
    before = (await _me(harness, first["access_token"])).json()["last_login_at"]
    assert (await _me(harness, first["access_token"])).json()["last_login_at"] == before
    clock.advance(minutes=1)
    assert (await _token(harness)).status_code == 200
    after = before
    for _ in range(100):
        after = (await _me(harness, first["access_token"])).json()["last_login_at"]
        if after != before:
            break
        await asyncio.sleep(0.05)
    assert after != before


# --- lifecycle and failures ---------------------------------------------------------------------


async def test_sign_in_works_after_a_restart_of_the_same_auth(make_harness: MakeHarness) -> None:
    """``shutdown`` then ``startup`` again (a test client's lifespan run twice, an app that
    restarts authdb): the engine, the session check and the keys come back; so must sign-in."""
    harness = await make_harness()
    await harness.create_user()
    assert (await _token(harness)).status_code == 200
    await harness.auth.shutdown()
    await harness.auth.startup()
    response = await _token(harness)
    assert response.status_code == 200, response.text
    assert (await _me(harness, response.json()["access_token"])).status_code == 200


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_connection_cut_inside_the_native_transaction_gives_503(
    make_harness: MakeHarness, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL goes away in the middle of the sign-in's transaction: 503 (an outage, as
    every other path answers), nothing half-written, and the next sign-in works."""
    proxy = await TcpProxy(target_port=5432).up()
    try:
        url = make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)
        harness = await make_harness(database_url=url)
        await harness.create_user()
        chained = audit_chain.chained
        cut: list[bool] = []

        def cut_then_chain(rows: Any, seq: int, prev: str | None) -> Any:
            if not cut:
                cut.append(True)
                for writer in list(proxy._writers):
                    writer.transport.abort()
            return chained(rows, seq, prev)

        monkeypatch.setattr(audit_chain, "chained", cut_then_chain)
        app: Any = harness.client._transport.app  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            during = await client.post("/token", data={"username": "alice", "password": PASSWORD})
            assert cut == [True]
            assert during.status_code == 503, during.text
            assert int(during.headers["retry-after"]) > 0
            assert await _count(harness, AuthSession) == 0
            after = await client.post("/token", data={"username": "alice", "password": PASSWORD})
            assert after.status_code == 200, after.text
        report = await audit_chain.verify(harness.auth.core)
        assert report.ok, report
    finally:
        await proxy.down()


async def test_on_the_orm_path_no_signing_key_leaves_nothing_behind(
    make_harness: MakeHarness,
) -> None:
    """The control for the test above: a rehash sends the sign-in through the ORM, where the
    token is made inside the transaction and its failure rolls the sign-in back."""
    first = await make_harness()
    await first.create_user()
    harness = await make_harness(password_hash_time_cost=2)  # rehash: the ORM path
    core = harness.auth.core
    assert core.codec is not None
    core.codec = dataclasses.replace(
        core.codec, keys=dataclasses.replace(core.codec.keys, signing_key=None)
    )
    response = await _token(harness)
    assert response.status_code == 503, response.text
    assert await _count(harness, AuthSession) == 0
    assert await _events(harness, "login_ok") == []
    async with core.sessionmaker() as db:
        assert await db.scalar(select(User.last_login_at)) is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_full_disk_during_the_native_write_is_an_outage(make_harness: MakeHarness) -> None:
    """SQLite's "database or disk is full" is an outage (authdb.db.outage): 503 with
    Retry-After, as the ORM path answers. SQLite rolls the transaction back itself on that
    error, so the native path's own ROLLBACK must not turn it into a 500."""
    harness = await make_harness(prune_every_n_logins=1_000_000)
    await harness.create_user()
    store: Any = harness.auth.core.sign_in
    writer = store._write_connection()  # the disk is "full" for the native writer alone
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count={pages}")
    agent = {"User-Agent": "a" * 512}
    statuses = []
    for _ in range(40):
        response = await _token(harness, headers=agent)
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
    assert statuses[-1] == 503, (statuses, response.text)
    assert "retry-after" in response.headers
    writer.execute("PRAGMA max_page_count=1073741823")
    assert (await _token(harness)).status_code == 200
    report = await audit_chain.verify(harness.auth.core)
    assert report.ok, report
