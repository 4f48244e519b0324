"""User administration: ``GET/PATCH/DELETE /users[/{id}]``, for superusers only."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from authdb.services.audit import list_events
from tests.conftest import PASSWORD, Harness

NEW_PASSWORD = "a fresh admin-set passphrase"


@pytest.fixture
async def root(harness: Harness) -> dict[str, str]:
    """The bearer headers of an active superuser, ``root``."""
    await harness.create_user("root", is_superuser=True)
    return await harness.bearer("root")


def _auth(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def _refresh(harness: Harness, tokens: dict[str, Any]) -> int:
    response = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    return response.status_code


async def _me(harness: Harness, tokens: dict[str, Any]) -> int:
    return (await harness.client.get("/users/me", headers=_auth(tokens))).status_code


async def _patch(harness: Harness, headers: dict[str, str], user_id: int, **body: Any) -> Any:
    return await harness.client.patch(f"/users/{user_id}", headers=headers, json=body)


async def test_admin_routes_are_for_active_superusers_only(harness: Harness) -> None:
    await harness.create_user("root", is_superuser=True)
    bob = await harness.create_user("bob")
    routes = [
        ("GET", "/users"),
        ("GET", f"/users/{bob.id}"),
        ("PATCH", f"/users/{bob.id}"),
        ("DELETE", f"/users/{bob.id}"),
    ]
    headers = await harness.bearer("bob")
    for method, path in routes:
        body = {"full_name": "x"} if method == "PATCH" else None
        anonymous = await harness.client.request(method, path, json=body)
        assert anonymous.status_code == 401
        assert anonymous.json() == {"detail": "Not authenticated"}
        assert anonymous.headers["www-authenticate"] == "Bearer"
        denied = await harness.client.request(method, path, json=body, headers=headers)
        assert denied.status_code == 403, (method, path)
        assert denied.json() == {"detail": "Not enough permissions"}
    assert (await harness.client.get(f"/users/{bob.id}", headers=headers)).status_code == 403
    ok = await harness.client.get("/users", headers=await harness.bearer("root"))
    assert ok.status_code == 200
    assert ok.headers["cache-control"] == "no-store"


async def test_users_are_listed_by_id_in_pages(harness: Harness, root: dict[str, str]) -> None:
    for name in ("bob", "carol", "dave", "erin"):
        await harness.create_user(name)
    everyone = (await harness.client.get("/users", headers=root)).json()
    assert everyone["total"] == 5
    assert [u["username"] for u in everyone["items"]] == ["root", "bob", "carol", "dave", "erin"]
    ids = [u["id"] for u in everyone["items"]]
    assert ids == sorted(ids)
    item = everyone["items"][1]
    assert set(item) >= {"id", "username", "email", "full_name", "disabled", "is_verified"}
    assert set(item) >= {"is_superuser", "created_at"}
    assert not any("password" in key for key in item)
    page = (await harness.client.get("/users?offset=1&limit=2", headers=root)).json()
    assert page == {"items": everyone["items"][1:3], "total": 5}
    beyond = await harness.client.get(f"/users?offset={2**63 - 1}", headers=root)
    assert beyond.status_code == 200
    assert beyond.json() == {"items": [], "total": 5}
    # Past the 64-bit range the value never reaches the database.
    too_big = await harness.client.get("/users?offset=99999999999999999999", headers=root)
    assert too_big.status_code == 422
    full = await harness.client.get("/users?limit=100", headers=root)
    assert full.status_code == 200
    for bad in ("offset=-1", "limit=0", "limit=101", "limit=ten", "offset=x", "search=a%00b"):
        response = await harness.client.get(f"/users?{bad}", headers=root)
        assert response.status_code == 422, bad


async def test_search_matches_username_email_or_full_name_in_any_case(
    harness: Harness, root: dict[str, str]
) -> None:
    await harness.create_user("jürgen", email="jm@example.org", full_name="Jürgen Müller")
    await harness.create_user("zoe", email="Zoe.Quinn@Mail.Example.NET", full_name="Zoë Ångström")
    await harness.create_user("under_score", full_name="100% Real")

    async def found(text: str) -> list[str]:
        response = await harness.client.get("/users", params={"search": text}, headers=root)
        assert response.status_code == 200
        page = response.json()
        assert page["total"] == len(page["items"])
        return [u["username"] for u in page["items"]]

    assert await found("JÜRG") == ["jürgen"]  # username, non-ASCII
    assert await found("QUINN@mail") == ["zoe"]  # email
    assert await found("ÅNGSTRÖM") == ["zoe"]  # full name, non-ASCII
    assert await found("müller") == ["jürgen"]
    assert await found("example.com") == ["root", "under_score"]
    # LIKE wildcards in the text are literal characters.
    assert await found("_") == ["under_score"]
    assert await found("%") == ["under_score"]
    assert await found("nobody-has-this") == []
    assert len(await found("")) == 4
    paged = await harness.client.get(
        "/users", params={"search": "e", "limit": 1, "offset": 1}, headers=root
    )
    assert paged.json()["total"] == 4
    assert [u["username"] for u in paged.json()["items"]] == ["jürgen"]


async def test_get_user_and_unknown_ids(harness: Harness, root: dict[str, str]) -> None:
    bob = await harness.create_user("bob", full_name="Bob B")
    response = await harness.client.get(f"/users/{bob.id}", headers=root)
    assert response.status_code == 200
    assert response.json()["username"] == "bob"
    assert response.json()["full_name"] == "Bob B"
    assert response.json()["created_at"].endswith(("Z", "+00:00"))
    for missing in (9999, 0, -1, 2**31, 10**30):
        for method in ("GET", "PATCH", "DELETE"):
            response = await harness.client.request(
                method, f"/users/{missing}", headers=root, json={"full_name": "x"}
            )
            assert response.status_code == 404, (method, missing)
            assert response.json() == {"detail": "User not found"}
    assert (await harness.client.get("/users/abc", headers=root)).status_code == 422


async def test_patch_changes_each_field(harness: Harness, root: dict[str, str]) -> None:
    bob = await harness.create_user("bob", full_name="Bob")
    changed = await _patch(harness, root, bob.id, username="Robert", full_name="Robert B")
    assert changed.status_code == 200, changed.text
    assert changed.json()["username"] == "Robert"
    assert changed.json()["full_name"] == "Robert B"
    assert changed.headers["cache-control"] == "no-store"
    await harness.login("robert")
    # A new address is unproven unless the administrator says otherwise.
    moved = (await _patch(harness, root, bob.id, email="rob@example.org")).json()
    assert (moved["email"], moved["is_verified"]) == ("rob@example.org", False)
    vouched = await _patch(harness, root, bob.id, email="r@example.net", is_verified=True)
    assert (vouched.json()["email"], vouched.json()["is_verified"]) == ("r@example.net", True)
    recased = (await _patch(harness, root, bob.id, email="R@example.net")).json()
    assert (recased["email"], recased["is_verified"]) == ("R@example.net", True)
    flags = await _patch(harness, root, bob.id, is_verified=False, is_superuser=True)
    assert (flags.json()["is_verified"], flags.json()["is_superuser"]) == (False, True)
    cleared = await _patch(harness, root, bob.id, full_name=None)
    assert cleared.json()["full_name"] is None
    same = await _patch(harness, root, bob.id)
    assert same.status_code == 200
    # The new superuser can administer now.
    robert = await harness.bearer("R@example.net")
    assert (await harness.client.get("/users", headers=robert)).status_code == 200
    events = [e for e in await list_events(harness.auth.core) if e.event == "admin_user_updated"]
    assert [e.detail["fields"] for e in events if e.detail] == [
        ["username", "full_name"],
        ["email", "is_verified"],
        ["email", "is_verified"],
        ["email"],
        ["is_verified", "is_superuser"],
        ["full_name"],
    ]
    root_id = (await harness.client.get("/users/me", headers=root)).json()["id"]
    assert {(e.user_id, e.actor_id) for e in events} == {(bob.id, root_id)}


async def test_patch_refuses_taken_names_and_bad_input(
    harness: Harness, root: dict[str, str]
) -> None:
    bob = await harness.create_user("bob")
    await harness.create_user("carol")
    taken = await _patch(harness, root, bob.id, username="CAROL")
    assert taken.status_code == 409
    assert taken.json() == {"detail": "Username already registered"}
    email = await _patch(harness, root, bob.id, email="Carol@Example.com")
    assert email.status_code == 409
    assert email.json() == {"detail": "Email already registered"}
    # With other changes that touch more tables in the same transaction.
    both = await _patch(harness, root, bob.id, email="carol@example.com", password=NEW_PASSWORD)
    assert both.json() == {"detail": "Email already registered"}
    both = await _patch(harness, root, bob.id, username="carol", email="new@example.com")
    assert both.json() == {"detail": "Username already registered"}
    for body in (
        {"username": "b!"},
        {"username": None},
        {"email": "not-an-email"},
        {"disabled": None},
        {"full_name": "nul\x00byte"},
        {"full_name": "clear\x1b[2Jscreen"},
        {"disabled": "sometimes"},
        {"hashed_password": "x"},
    ):
        response = await _patch(harness, root, bob.id, **body)
        assert response.status_code == 422, body
    unchanged = (await harness.client.get(f"/users/{bob.id}", headers=root)).json()
    assert (unchanged["username"], unchanged["email"]) == ("bob", "bob@example.com")


async def test_admin_password_follows_policy_and_ends_every_session(
    harness: Harness, root: dict[str, str]
) -> None:
    bob = await harness.create_user("bob")
    tokens = await harness.login("bob")
    for weak, rule in (("short", "8"), ("password123", "common")):
        response = await _patch(harness, root, bob.id, password=weak)
        assert response.status_code == 422, weak
        [issue] = response.json()["detail"]
        assert (issue["loc"], issue["type"]) == (["body", "password"], "value_error")
        assert rule in issue["msg"]
    named = await _patch(harness, root, bob.id, username="bobby-tables", password="Bobby-Tables")
    assert named.status_code == 422  # checked against the new username
    assert await _me(harness, tokens) == 200
    done = await _patch(harness, root, bob.id, password=NEW_PASSWORD)
    assert done.status_code == 200
    assert await _me(harness, tokens) == 401
    assert await _refresh(harness, tokens) == 401
    await harness.login("bob", NEW_PASSWORD)
    wrong = await harness.client.post("/token", data={"username": "bob", "password": PASSWORD})
    assert wrong.status_code == 401
    trail = json.dumps([e.detail for e in await list_events(harness.auth.core)])
    assert NEW_PASSWORD not in trail
    assert '"password"' in trail  # the field's name, not its value


async def test_disabling_ends_sessions_at_once_and_enabling_allows_login(
    harness: Harness, root: dict[str, str]
) -> None:
    bob = await harness.create_user("bob")
    tokens = await harness.login("bob")
    other = await harness.login("bob")
    disabled = await _patch(harness, root, bob.id, disabled=True)
    assert disabled.status_code == 200
    assert disabled.json()["disabled"] is True
    assert await _me(harness, tokens) == 401
    assert await _me(harness, other) == 401
    assert await _refresh(harness, tokens) == 401
    refused = await harness.client.post("/token", data={"username": "bob", "password": PASSWORD})
    assert refused.status_code == 400
    assert refused.json()["detail"] == "Inactive user"
    assert (await _patch(harness, root, bob.id, disabled=False)).json()["disabled"] is False
    fresh = await harness.login("bob")
    assert await _me(harness, fresh) == 200
    assert await _refresh(harness, tokens) == 401  # old sessions stay ended


async def test_delete_removes_the_user_and_their_sessions(
    harness: Harness, root: dict[str, str]
) -> None:
    bob = await harness.create_user("bob")
    tokens = await harness.login("bob")
    response = await harness.client.delete(f"/users/{bob.id}", headers=root)
    assert response.status_code == 204
    assert response.content == b""
    assert await _me(harness, tokens) == 401
    assert await _refresh(harness, tokens) == 401
    assert (await harness.client.get(f"/users/{bob.id}", headers=root)).status_code == 404
    assert (await harness.client.delete(f"/users/{bob.id}", headers=root)).status_code == 404
    await harness.create_user("bob")  # the name is free again
    deleted = [e for e in await list_events(harness.auth.core) if e.event == "admin_user_deleted"]
    assert len(deleted) == 1
    assert deleted[0].user_id == bob.id
    assert deleted[0].actor_id is not None
    assert deleted[0].detail == {"username": "bob"}


async def test_the_last_active_superuser_stays(harness: Harness, root: dict[str, str]) -> None:
    root_id = (await harness.client.get("/users/me", headers=root)).json()["id"]
    sleeper = await harness.create_user("sleeper", is_superuser=True, disabled=True)
    for body in ({"is_superuser": False}, {"disabled": True}):
        refused = await _patch(harness, root, root_id, **body)
        assert refused.status_code == 409, body
        assert "last active superuser" in refused.json()["detail"]
    refused = await harness.client.delete(f"/users/{root_id}", headers=root)
    assert refused.status_code == 409
    assert "last active superuser" in refused.json()["detail"]
    # Harmless changes to oneself are fine, and a disabled superuser counts for nothing.
    assert (await _patch(harness, root, root_id, full_name="Root")).status_code == 200
    assert (await _patch(harness, root, sleeper.id, is_superuser=False)).status_code == 200
    # With a second active superuser, either may step down, but not both.
    admin2 = await harness.create_user("admin2", is_superuser=True)
    assert (await _patch(harness, root, admin2.id, disabled=True)).status_code == 200
    assert (await _patch(harness, root, admin2.id, disabled=False)).status_code == 200
    assert (await _patch(harness, root, root_id, is_superuser=False)).status_code == 200
    assert (await harness.client.get("/users", headers=root)).status_code == 403
    other = await harness.bearer("admin2")
    last = await _patch(harness, other, admin2.id, disabled=True)
    assert last.status_code == 409
    users = (await harness.client.get("/users", headers=other)).json()["items"]
    assert [u["username"] for u in users if u["is_superuser"] and not u["disabled"]] == ["admin2"]


async def test_two_superusers_demoting_each_other_at_once_leave_one(
    harness: Harness, root: dict[str, str]
) -> None:
    root_id = (await harness.client.get("/users/me", headers=root)).json()["id"]
    other = await harness.create_user("admin2", is_superuser=True)
    other_headers = await harness.bearer("admin2")
    results = await asyncio.gather(
        _patch(harness, root, other.id, is_superuser=False),
        _patch(harness, other_headers, root_id, disabled=True),
    )
    assert sorted(r.status_code for r in results) == [200, 409]
    survivor = root if results[0].status_code == 200 else other_headers
    page = await harness.client.get("/users", headers=survivor)
    active = [u for u in page.json()["items"] if u["is_superuser"] and not u["disabled"]]
    assert len(active) == 1


async def test_a_deleted_users_token_never_works_for_a_later_user(
    harness: Harness, root: dict[str, str]
) -> None:
    # Without AUTOINCREMENT SQLite would give carol bob's ids, and bob's token would be hers.
    bob = await harness.create_user("bob")
    tokens = await harness.login("bob")
    assert (await harness.client.delete(f"/users/{bob.id}", headers=root)).status_code == 204
    await harness.create_user("carol")
    await harness.login("carol")
    assert await _me(harness, tokens) == 401
