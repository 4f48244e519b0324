"""``@auth.on(event)``: callbacks run once after the commit, with the user and the client;
a failing one is logged and changes nothing; each ``Auth`` hears only its own events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import select

from authdb import Auth
from authdb.db.models import User
from authdb.errors import Conflict
from authdb.services import audit, mfa
from authdb.services.core import CLI_CLIENT, ClientInfo
from authdb.services.hooks import EVENTS, Hooks, UserSnapshot, hook_names
from tests.conftest import PASSWORD, Harness, Mailbox
from tests.mfa_helpers import freeze, totp_code
from tests.test_accounts import NEW_PASSWORD, register, token_mailed

MakeHarness = Callable[..., Awaitable[Harness]]
AGENT = "hooks-test-agent/1.0"
HEADERS = {"User-Agent": AGENT}


@dataclass
class Recorder:
    """Every callback call: (event, user, client)."""

    calls: list[tuple[str, UserSnapshot, ClientInfo]] = field(default_factory=list)

    def events(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def last(self, event: str) -> tuple[UserSnapshot, ClientInfo]:
        found = [(user, client) for name, user, client in self.calls if name == event]
        assert found, f"no {event} in {self.events()}"
        return found[-1]


def record_all(auth: Auth) -> Recorder:
    recorder = Recorder()
    for name in EVENTS:

        def make(event: str) -> Callable[[UserSnapshot, ClientInfo], Awaitable[None]]:
            async def callback(user: UserSnapshot, client: ClientInfo) -> None:
                recorder.calls.append((event, user, client))

            return callback

        auth.on(name)(make(name))
    return recorder


async def settled(harness: Harness) -> None:
    """Wait until every callback scheduled so far has run (nothing is cancelled)."""
    await harness.auth.hooks.drain(grace=None)


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()


# --- each event, once, after the commit, with the user and the client ---------------------------


async def test_every_event_fires_once_with_user_and_client(
    harness: Harness, mailbox: Mailbox
) -> None:
    recorder = record_all(harness.auth)
    clock = freeze(harness)
    http = harness.client
    expected: list[str] = []

    async def step(*events: str) -> None:
        await settled(harness)
        expected.extend(events)
        assert recorder.events() == expected

    body = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
    signup = http.post("/register", json=body, headers=HEADERS)
    token = await token_mailed(mailbox, "alice@example.com", "verify", signup, 201)
    await step("user_registered")
    user, client = recorder.last("user_registered")
    assert (user.username, user.email, user.is_verified) == ("alice", "alice@example.com", False)
    assert client == ClientInfo(ip_address="127.0.0.1", user_agent=AGENT)
    alice_id = user.id

    assert (await http.post("/verify", json={"token": token}, headers=HEADERS)).status_code == 200
    await step("user_verified")
    assert recorder.last("user_verified")[0].is_verified is True

    login = await http.post(
        "/token", data={"username": "alice", "password": PASSWORD}, headers=HEADERS
    )
    assert login.status_code == 200
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}", **HEADERS}
    await step("login")
    assert recorder.last("login")[0].last_login_at is not None

    patch = await http.patch("/users/me", json={"full_name": "Alice A."}, headers=bearer)
    assert patch.status_code == 200
    await step("user_updated")
    assert recorder.last("user_updated")[0].full_name == "Alice A."

    new_email = "alice.new@example.com"
    change = http.patch(
        "/users/me", json={"email": new_email, "current_password": PASSWORD}, headers=bearer
    )
    token = await token_mailed(mailbox, new_email, "verify", change, 200)
    await step("user_updated")
    assert recorder.last("user_updated")[0].pending_email == new_email
    assert (await http.post("/verify", json={"token": token}, headers=HEADERS)).status_code == 200
    await step("email_changed", "user_verified")
    assert recorder.last("email_changed")[0].email == new_email

    changed = await http.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer,
    )
    assert changed.status_code == 204
    await step("password_changed")

    setup = await http.post(
        "/users/me/mfa/totp/setup", json={"password": NEW_PASSWORD}, headers=bearer
    )
    secret = setup.json()["secret"]
    confirm = await http.post(
        "/users/me/mfa/totp/confirm", json={"code": totp_code(secret, clock.now)}, headers=bearer
    )
    assert confirm.status_code == 200
    await step("mfa_enabled")
    assert recorder.last("mfa_enabled")[0].mfa_enabled is True
    clock.advance(seconds=30)
    off = await http.request(
        "DELETE",
        "/users/me/mfa",
        json={"password": NEW_PASSWORD, "code": totp_code(secret, clock.now)},
        headers=bearer,
    )
    assert off.status_code == 204, off.text
    await step("mfa_disabled")
    assert recorder.last("mfa_disabled")[0].mfa_enabled is False

    assert (await http.post("/logout", headers=bearer)).status_code == 204
    await step("logout")

    forgot = http.post("/password/forgot", json={"email": new_email}, headers=HEADERS)
    token = await token_mailed(mailbox, new_email, "reset-password", forgot, 202)
    await step()  # asking for a link changes nothing
    reset = await http.post(
        "/password/reset", json={"token": token, "password": PASSWORD}, headers=HEADERS
    )
    assert reset.status_code == 204
    await step("password_reset")

    bearer = {**(await harness.bearer("alice", PASSWORD)), **HEADERS}
    await step("login")
    deleted = await http.request("DELETE", "/users/me", json={"password": PASSWORD}, headers=bearer)
    assert deleted.status_code == 204
    await step("user_deleted")
    gone, client = recorder.last("user_deleted")
    # The user as they were just before the row went.
    assert (gone.id, gone.username, gone.email, gone.full_name) == (
        alice_id,
        "alice",
        new_email,
        "Alice A.",
    )
    assert client.user_agent == AGENT
    assert {user.id for _, user, _ in recorder.calls} == {alice_id}


async def test_admin_and_cli_changes_fire_their_events(harness: Harness) -> None:
    recorder = record_all(harness.auth)
    await harness.create_user("root", is_superuser=True)
    bob = await harness.create_user("bob")
    await settled(harness)
    assert recorder.events() == ["user_registered", "user_registered"]
    assert recorder.last("user_registered")[1] == CLI_CLIENT  # provisioning, as the CLI does
    admin = await harness.bearer("root")
    await settled(harness)
    recorder.calls.clear()

    changes = {"password": "another long passphrase", "email": "robert@example.com"}
    response = await harness.client.patch(f"/users/{bob.id}", json=changes, headers=admin)
    assert response.status_code == 200
    await settled(harness)
    assert recorder.events() == ["user_updated", "password_changed", "email_changed"]
    assert recorder.last("email_changed")[0].email == "robert@example.com"

    recorder.calls.clear()
    await mfa.reset(harness.auth.core, bob.id, CLI_CLIENT)  # MFA was off: nothing changed
    await settled(harness)
    assert recorder.events() == []

    response = await harness.client.delete(f"/users/{bob.id}", headers=admin)
    assert response.status_code == 204
    await settled(harness)
    assert recorder.events() == ["user_deleted"]
    assert recorder.last("user_deleted")[0].username == "bob"


def test_audit_events_map_to_hook_names() -> None:
    assert hook_names("registered", {}) == ("user_registered",)
    assert hook_names("user_created", {}) == ("user_registered",)
    assert hook_names("login_ok", {"mfa": None}) == ("login",)
    assert hook_names("admin_user_updated", {"fields": ["disabled"]}) == ("user_updated",)
    assert hook_names("mfa_reset", {"was_on": True}) == ("mfa_disabled",)
    assert hook_names("mfa_reset", {"was_on": False}) == ()
    assert hook_names("login_refused", {}) == ()
    assert hook_names("session_revoked", {}) == ()


# --- nothing for a change that does not commit -------------------------------------------------


async def test_no_event_for_a_rolled_back_change(harness: Harness) -> None:
    recorder = record_all(harness.auth)
    await harness.create_user("alice")
    await settled(harness)
    recorder.calls.clear()

    taken = await register(harness, "alice", email="other@example.com")
    assert taken.status_code == 409
    with pytest.raises(Conflict):
        await harness.auth.users.create(
            username="alice2", email="alice@example.com", password=PASSWORD
        )
    # A transaction that records an event and then rolls back.
    async with harness.auth.core.sessionmaker() as db:
        alice = await db.scalar(select(User).where(User.username == "alice"))
        assert alice is not None
        now = harness.auth.core.clock()
        audit.record(db, "account_updated", client=None, now=now, user_id=alice.id)
        await db.rollback()
    await settled(harness)
    assert recorder.calls == []


async def test_nothing_is_kept_for_events_without_callbacks(harness: Harness) -> None:
    user = await harness.create_user("alice")
    async with harness.auth.core.sessionmaker() as db:
        audit.record(db, "login_ok", client=None, now=harness.auth.core.clock(), user_id=user.id)
        assert "authdb_hooks_due" not in db.sync_session.info
        harness.auth.on("logout")(_noop)  # another event's callback changes nothing
        audit.record(db, "login_ok", client=None, now=harness.auth.core.clock(), user_id=user.id)
        assert "authdb_hooks_due" not in db.sync_session.info
        await db.rollback()


async def _noop(user: UserSnapshot, client: ClientInfo) -> None:
    return None


# --- a failing or slow callback -----------------------------------------------------------------


async def test_a_raising_callback_is_logged_and_changes_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    after: list[str] = []

    @harness.auth.on("login")
    async def broken(user: UserSnapshot, client: ClientInfo) -> None:
        raise RuntimeError("the app's bug")

    @harness.auth.on("login")
    async def next_one(user: UserSnapshot, client: ClientInfo) -> None:
        after.append(user.username)

    @harness.auth.on("user_deleted")
    async def broken_too(user: UserSnapshot, client: ClientInfo) -> None:
        raise ValueError("no")

    await harness.create_user("alice")
    with caplog.at_level(logging.ERROR, logger="authdb.hooks"):
        headers = await harness.bearer()  # 200 all the same
        await settled(harness)
        deleted = await harness.client.request(
            "DELETE", "/users/me", json={"password": PASSWORD}, headers=headers
        )
        await settled(harness)
    assert deleted.status_code == 204
    assert after == ["alice"]  # the next callback still runs
    failures = [r for r in caplog.records if r.name == "authdb.hooks"]
    assert [r.getMessage().split(" failed on ")[1].split()[0] for r in failures] == [
        "login",
        "user_deleted",
    ]
    assert all(r.exc_info is not None for r in failures)
    assert "the app's bug" in caplog.text and "RuntimeError" in caplog.text
    # The change stands: alice is gone.
    assert (await harness.client.get("/users/me", headers=headers)).status_code == 401
    async with harness.auth.core.sessionmaker() as db:
        assert await db.scalar(select(User).where(User.username == "alice")) is None


async def test_the_response_does_not_wait_for_a_slow_callback(harness: Harness) -> None:
    release = asyncio.Event()
    done: list[str] = []

    @harness.auth.on("user_registered")
    async def slow(user: UserSnapshot, client: ClientInfo) -> None:
        await release.wait()
        done.append(user.username)

    response = await register(harness, "alice")
    assert response.status_code == 201  # answered while the callback still waits
    assert harness.auth.hooks.pending == 1 and done == []
    release.set()
    await settled(harness)
    assert done == ["alice"] and harness.auth.hooks.pending == 0


async def test_shutdown_cancels_a_callback_that_never_ends(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled = asyncio.Event()

    @harness.auth.on("user_registered")
    async def stuck(user: UserSnapshot, client: ClientInfo) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    await harness.create_user("alice")
    with caplog.at_level(logging.WARNING, logger="authdb.hooks"):
        await harness.auth.hooks.drain(grace=0.05)
    assert cancelled.is_set() and harness.auth.hooks.pending == 0
    assert "cancelling 1 authdb event callback" in caplog.text


def test_callbacks_must_be_async_and_events_known() -> None:
    hooks = Hooks()
    with pytest.raises(ValueError, match="unknown authdb event 'user_created'"):
        hooks.on("user_created")
    with pytest.raises(TypeError, match="async def"):
        hooks.on("login")(lambda user, client: None)  # type: ignore[arg-type,return-value]

    async def one_argument(user: UserSnapshot) -> None:
        return None

    async def keyword_only(user: UserSnapshot, *, client: ClientInfo) -> None:
        return None

    for wrong in (one_argument, keyword_only):
        with pytest.raises(TypeError, match="two arguments, \\(user, client\\)"):
            hooks.on("login")(wrong)  # type: ignore[arg-type]

    async def with_extras(user: UserSnapshot, client: ClientInfo, *rest: object) -> None:
        return None

    assert hooks.on("logout")(with_extras) is with_extras

    class Callable_:
        async def __call__(self, user: UserSnapshot, client: ClientInfo) -> None:
            return None

    instance = Callable_()
    assert hooks.on("login")(instance) is instance
    assert hooks.callbacks("login") == [instance]


# --- one Auth, its own events ------------------------------------------------------------------


async def test_two_auths_in_one_process_hear_only_their_own_events(
    make_harness: MakeHarness,
) -> None:
    first = await make_harness()
    second = await make_harness()  # the same database, another Auth
    heard: dict[str, list[str]] = {"first": [], "second": []}

    for name, harness in (("first", first), ("second", second)):

        def make(key: str) -> Callable[[UserSnapshot, ClientInfo], Awaitable[None]]:
            async def callback(user: UserSnapshot, client: ClientInfo) -> None:
                heard[key].append(user.username)

            return callback

        harness.auth.on("user_registered")(make(name))

    await first.auth.users.create(username="alice", email="a@example.com", password=PASSWORD)
    assert (await register(second, "bob")).status_code == 201
    await settled(first)
    await settled(second)
    assert heard == {"first": ["alice"], "second": ["bob"]}


async def test_user_loaded_when_the_session_did_not_hold_it(harness: Harness) -> None:
    """Logout's session never loads the user row: the callback gets it fresh."""
    recorder = Recorder()

    @harness.auth.on("logout")
    async def on_logout(user: UserSnapshot, client: ClientInfo) -> None:
        recorder.calls.append(("logout", user, client))

    await harness.create_user("alice", full_name="Alice")
    headers = await harness.bearer()
    assert (await harness.client.post("/logout", headers=headers)).status_code == 204
    await settled(harness)
    user, _ = recorder.last("logout")
    assert (user.username, user.full_name, user.is_active) == ("alice", "Alice", True)
    assert user.created_at <= harness.auth.core.clock() + timedelta(seconds=1)
