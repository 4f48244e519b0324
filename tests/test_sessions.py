"""Sessions: refresh rotation, reuse detection, logout, listing, deletion and revocation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from authdb.services import provisioning, sessions
from authdb.services.core import CLI_CLIENT
from tests.conftest import PASSWORD, Harness


async def _refresh(harness: Harness, token: str) -> Any:
    return await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": token}
    )


def _auth(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def _status(harness: Harness, tokens: dict[str, Any]) -> int:
    return (await harness.client.get("/users/me", headers=_auth(tokens))).status_code


async def test_login_returns_refresh_token_and_rotation_spends_it(harness: Harness) -> None:
    await harness.create_user()
    first = await harness.login()
    assert len(first["refresh_token"]) >= 43  # 256 bits, URL-safe
    response = await _refresh(harness, first["refresh_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["token_type"] == "bearer"
    assert await _status(harness, second) == 200


async def test_reused_refresh_token_revokes_the_session(harness: Harness) -> None:
    await harness.create_user()
    first = await harness.login()
    second = (await _refresh(harness, first["refresh_token"])).json()
    reuse = await _refresh(harness, first["refresh_token"])
    assert reuse.status_code == 401
    assert reuse.json() == {"detail": "Invalid refresh token"}
    assert reuse.headers["www-authenticate"] == "Bearer"
    # The thief's replay ended the victim's session too: newest tokens are dead.
    assert await _status(harness, second) == 401
    assert (await _refresh(harness, second["refresh_token"])).status_code == 401
    events = [e.event for e in await _audit(harness)]
    assert "refresh_token_reuse" in events


async def _audit(harness: Harness) -> list[Any]:
    from authdb.services.audit import list_events

    return await list_events(harness.auth.core)


async def test_unknown_refresh_token_is_refused(harness: Harness) -> None:
    response = await _refresh(harness, "not-a-real-token")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid refresh token"}
    missing = await harness.client.post("/token", data={"grant_type": "refresh_token"})
    assert missing.status_code == 422
    unsupported = await harness.client.post("/token", data={"grant_type": "client_credentials"})
    assert unsupported.status_code == 400


async def test_concurrent_refresh_with_one_token_has_one_winner(harness: Harness) -> None:
    await harness.create_user()
    tokens = await harness.login()
    responses = await asyncio.gather(
        *(_refresh(harness, tokens["refresh_token"]) for _ in range(8))
    )
    assert sorted(r.status_code for r in responses).count(200) == 1


async def test_logout_ends_session_at_once(harness: Harness) -> None:
    await harness.create_user()
    tokens = await harness.login()
    other = await harness.login()
    response = await harness.client.post("/logout", headers=_auth(tokens))
    assert response.status_code == 204
    assert await _status(harness, tokens) == 401
    assert (await _refresh(harness, tokens["refresh_token"])).status_code == 401
    assert await _status(harness, other) == 200
    assert (await harness.client.post("/logout")).status_code == 401


async def test_logout_accepts_refresh_token_body(harness: Harness) -> None:
    await harness.create_user()
    tokens = await harness.login()
    response = await harness.client.post(
        "/logout", headers=_auth(tokens), json={"refresh_token": tokens["refresh_token"]}
    )
    assert response.status_code == 204
    assert (await _refresh(harness, tokens["refresh_token"])).status_code == 401


async def test_sessions_are_listed_with_current_marked(harness: Harness) -> None:
    await harness.create_user()
    first = await harness.login()
    second = await harness.client.post(
        "/token",
        data={"username": "alice", "password": PASSWORD},
        headers={"User-Agent": "phone/1.0"},
    )
    listed = (await harness.client.get("/users/me/sessions", headers=_auth(first))).json()
    assert len(listed) == 2
    current = [s for s in listed if s["current"]]
    assert len(current) == 1
    assert {s["user_agent"] for s in listed} >= {"phone/1.0"}
    for item in listed:
        assert set(item) >= {"id", "created_at", "last_used_at", "expires_at", "ip_address"}
        assert item["expires_at"].endswith(("Z", "+00:00"))
    await harness.client.post("/logout", headers=_auth(second.json()))
    after = (await harness.client.get("/users/me/sessions", headers=_auth(first))).json()
    assert [s["id"] for s in after] == [current[0]["id"]]


async def test_deleting_a_session_ends_it_and_others_are_404(harness: Harness) -> None:
    await harness.create_user("alice")
    await harness.create_user("bob")
    alice_a = await harness.login("alice")
    alice_b = await harness.login("alice")
    bob = await harness.login("bob")
    ids = [
        s["id"]
        for s in (await harness.client.get("/users/me/sessions", headers=_auth(alice_a))).json()
    ]
    target = next(i for i in ids if i != _current_id(ids, alice_a))
    bob_sessions = (await harness.client.get("/users/me/sessions", headers=_auth(bob))).json()
    other = await harness.client.delete(
        f"/users/me/sessions/{bob_sessions[0]['id']}", headers=_auth(alice_a)
    )
    assert other.status_code == 404
    assert await _status(harness, bob) == 200
    done = await harness.client.delete(f"/users/me/sessions/{target}", headers=_auth(alice_a))
    assert done.status_code == 204
    assert await _status(harness, alice_b) == 401
    assert await _status(harness, alice_a) == 200
    again = await harness.client.delete(f"/users/me/sessions/{target}", headers=_auth(alice_a))
    assert again.status_code == 404


def _current_id(ids: list[int], tokens: dict[str, Any]) -> int:
    import jwt

    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["sid"] in ids
    return int(claims["sid"])


async def test_expired_session_cannot_refresh(harness: Harness) -> None:
    await harness.create_user()
    tokens = await harness.login()
    harness.auth.core.clock = lambda: datetime.now(UTC) + timedelta(days=15)
    assert (await _refresh(harness, tokens["refresh_token"])).status_code == 401


async def test_cli_password_change_ends_all_sessions(harness: Harness) -> None:
    await harness.create_user()
    tokens = await harness.login()
    await provisioning.set_password(
        harness.auth.core, "alice", "a brand new passphrase", CLI_CLIENT
    )
    assert await _status(harness, tokens) == 401
    assert (await _refresh(harness, tokens["refresh_token"])).status_code == 401


async def test_prune_removes_ended_sessions_only(harness: Harness) -> None:
    await harness.create_user()
    ended = await harness.login()
    live = await harness.login()
    await harness.client.post("/logout", headers=_auth(ended))
    assert await sessions.prune(harness.auth.core) == 1
    assert await _status(harness, live) == 200
    harness.auth.core.clock = lambda: datetime.now(UTC) + timedelta(days=15)
    assert await sessions.prune(harness.auth.core) == 1
