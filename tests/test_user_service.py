"""``auth.users``: the account services for application code, with the API's rules, errors,
audit events and callbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pydantic import BaseModel

from authdb import Auth, Settings
from authdb.db import migrate
from authdb.errors import Conflict, InvalidInput, NotFound
from authdb.services.audit import list_events
from authdb.services.core import ClientInfo
from authdb.services.hooks import UserSnapshot
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
NEW_PASSWORD = "a different, long passphrase"
CLIENT = ClientInfo(ip_address="203.0.113.7", user_agent="my-app-admin")


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()


async def events(harness: Harness) -> list[tuple[str, int | None, str | None]]:
    return [(e.event, e.user_id, e.ip_address) for e in await list_events(harness.auth.core)]


async def test_get_and_get_by_login(harness: Harness) -> None:
    users = harness.auth.users
    alice = await harness.create_user("alice", email="Alice@Example.com")
    assert (await users.get(alice.id)).username == "alice"
    assert (await users.get_by_login("ALICE")).id == alice.id
    assert (await users.get_by_login("alice@example.com")).id == alice.id
    for missing in (alice.id + 1000, 0, -1, 2**70):
        with pytest.raises(NotFound, match="User not found"):
            await users.get(missing)
    with pytest.raises(NotFound, match="User not found"):
        await users.get_by_login("nobody")


async def test_create_applies_registration_rules_and_fires_user_registered(
    harness: Harness,
) -> None:
    users = harness.auth.users
    heard: list[tuple[str, ClientInfo]] = []

    @harness.auth.on("user_registered")
    async def registered(user: UserSnapshot, client: ClientInfo) -> None:
        heard.append((user.username, client))

    bob = await users.create(
        username="bob", email="bob@example.com", password=PASSWORD, full_name="Bob", client=CLIENT
    )
    assert (bob.username, bob.full_name, bob.is_verified, bob.is_superuser) == (
        "bob",
        "Bob",
        False,  # the application has not proven the address unless it says so
        False,
    )
    carol = await users.create(
        username="carol", email="carol@example.com", password=PASSWORD, is_verified=True
    )
    assert carol.is_verified
    await harness.login("bob")  # the password works
    await harness.auth.hooks.drain(grace=None)
    assert heard == [("bob", CLIENT), ("carol", ClientInfo())]
    assert ("user_created", bob.id, "203.0.113.7") in await events(harness)

    with pytest.raises(InvalidInput) as weak:
        await users.create(username="dave", email="dave@example.com", password="short")
    assert weak.value.field == "password"
    with pytest.raises(InvalidInput) as bad_email:
        await users.create(username="dave", email="not an email", password=PASSWORD)
    assert bad_email.value.field == "email"
    with pytest.raises(InvalidInput) as bad_name:
        await users.create(username="a b\x00", email="dave@example.com", password=PASSWORD)
    assert bad_name.value.field == "username"
    with pytest.raises(Conflict, match="Username already registered"):
        await users.create(username="BOB", email="bob2@example.com", password=PASSWORD)
    with pytest.raises(Conflict, match="Email already registered"):
        await users.create(username="bob2", email="BOB@example.com", password=PASSWORD)
    with pytest.raises(InvalidInput, match="no profile fields"):
        await users.create(
            username="erin", email="erin@example.com", password=PASSWORD, profile={"a": 1}
        )


async def test_update_follows_the_admin_rules(harness: Harness) -> None:
    users = harness.auth.users
    alice = await harness.create_user("alice")  # verified
    heard: list[str] = []
    for name in ("user_updated", "email_changed", "password_changed"):

        def make(event: str) -> Callable[[UserSnapshot, ClientInfo], Awaitable[None]]:
            async def callback(user: UserSnapshot, client: ClientInfo) -> None:
                heard.append(event)

            return callback

        harness.auth.on(name)(make(name))

    updated = await users.update(alice.id, full_name="Alice A.", email="new@example.com")
    assert (updated.full_name, updated.email, updated.is_verified) == (
        "Alice A.",
        "new@example.com",
        False,  # a new address is unproven unless is_verified comes with it
    )
    again = await users.update(alice.id, email="newer@example.com", is_verified=True)
    assert again.is_verified
    await harness.auth.hooks.drain(grace=None)
    assert heard == ["user_updated", "email_changed", "user_updated", "email_changed"]

    with pytest.raises(InvalidInput, match="Unknown field: hashed_password"):
        await users.update(alice.id, hashed_password="x")
    with pytest.raises(InvalidInput, match="username cannot be null"):
        await users.update(alice.id, username=None)
    with pytest.raises(InvalidInput) as weak:
        await users.update(alice.id, password="short")
    assert weak.value.field == "password"
    with pytest.raises(NotFound):
        await users.update(alice.id + 1000, full_name="x")
    await harness.create_user("bob")
    with pytest.raises(Conflict, match="Username already registered"):
        await users.update(alice.id, username="Bob")
    assert (await users.get(alice.id)).username == "alice"


async def test_set_password_ends_sessions(harness: Harness) -> None:
    users = harness.auth.users
    alice = await harness.create_user("alice")
    headers = await harness.bearer()
    await users.set_password(alice.id, NEW_PASSWORD, client=CLIENT)
    assert (await harness.client.get("/users/me", headers=headers)).status_code == 401
    await harness.login("alice", NEW_PASSWORD)
    assert ("password_changed", alice.id, "203.0.113.7") in await events(harness)
    with pytest.raises(InvalidInput) as weak:
        await users.set_password(alice.id, "alice")
    assert weak.value.field == "password"
    with pytest.raises(NotFound):
        await users.set_password(alice.id + 1000, NEW_PASSWORD)


async def test_disable_and_delete(harness: Harness) -> None:
    users = harness.auth.users
    root = await harness.create_user("root", is_superuser=True)
    alice = await harness.create_user("alice")
    headers = await harness.bearer()
    disabled = await users.disable(alice.id)
    assert disabled.disabled
    assert (await harness.client.get("/users/me", headers=headers)).status_code == 401
    refused = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert refused.status_code in (400, 401, 403)

    with pytest.raises(Conflict, match="last active superuser"):
        await users.disable(root.id)
    with pytest.raises(Conflict, match="last active superuser"):
        await users.delete(root.id)

    await users.delete(alice.id)
    with pytest.raises(NotFound):
        await users.get(alice.id)
    with pytest.raises(NotFound):
        await users.delete(alice.id)
    assert ("admin_user_deleted", alice.id, None) in await events(harness)


class Profile(BaseModel):
    company: str
    seats: int = 1


@pytest.fixture
async def profile_auth(make_settings: Callable[..., Settings]) -> AsyncIterator[Auth]:
    auth = Auth(make_settings(), profile=Profile)
    await migrate.upgrade(auth.core.engine)
    await auth.startup()
    yield auth
    await auth.shutdown()


async def test_profile_is_validated_by_the_apps_model(profile_auth: Auth) -> None:
    users = profile_auth.users
    heard: list[dict[str, object] | None] = []

    @profile_auth.on("user_registered")
    async def registered(user: UserSnapshot, client: ClientInfo) -> None:
        heard.append(user.profile)

    alice = await users.create(
        username="alice", email="a@example.com", password=PASSWORD, profile={"company": "ACME"}
    )
    assert alice.profile == {"company": "ACME", "seats": 1}
    assert (await users.get(alice.id)).profile == {"company": "ACME", "seats": 1}
    bob = await users.create(
        username="bob", email="b@example.com", password=PASSWORD, profile=Profile(company="B")
    )
    assert bob.profile == {"company": "B", "seats": 1}
    with pytest.raises(InvalidInput) as bad:
        await users.create(
            username="carol", email="c@example.com", password=PASSWORD, profile={"seats": "x"}
        )
    assert bad.value.field is not None and bad.value.field.startswith("profile")
    with pytest.raises(NotFound):
        await users.get_by_login("carol")  # nothing half-made

    @profile_auth.on("user_updated")
    async def updated(user: UserSnapshot, client: ClientInfo) -> None:
        heard.append(user.profile)

    changed = await users.update(alice.id, profile={"seats": 3})  # merged key by key
    assert changed.profile == {"company": "ACME", "seats": 3}
    with pytest.raises(InvalidInput):
        await users.update(alice.id, profile={"company": None})
    assert (await users.get(alice.id)).profile == {"company": "ACME", "seats": 3}
    await profile_auth.hooks.drain(grace=None)
    assert heard == [
        {"company": "ACME", "seats": 1},
        {"company": "B", "seats": 1},
        {"company": "ACME", "seats": 3},
    ]
