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


class _Clock:
    """Stands in for ``core.clock``: real time plus whatever the test skips ahead."""

    def __init__(self) -> None:
        self.skipped = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.skipped


async def test_reused_refresh_token_revokes_the_session(harness: Harness) -> None:
    await harness.create_user()
    clock = _Clock()
    harness.auth.core.clock = clock
    first = await harness.login()
    second = (await _refresh(harness, first["refresh_token"])).json()
    clock.skipped = timedelta(seconds=11)  # past AUTHDB_REFRESH_REUSE_INTERVAL_SECONDS (10)
    reuse = await _refresh(harness, first["refresh_token"])
    assert reuse.status_code == 401
    assert reuse.json()["detail"] == "Invalid refresh token"
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
    assert response.json()["detail"] == "Invalid refresh token"
    missing = await harness.client.post("/token", data={"grant_type": "refresh_token"})
    assert missing.status_code == 422
    unsupported = await harness.client.post("/token", data={"grant_type": "client_credentials"})
    assert unsupported.status_code == 400


async def test_parallel_refreshes_within_the_interval_share_one_successor(
    harness: Harness,
) -> None:
    # Two browser tabs (here ten) refreshing with one token at once must not log the user out.
    await harness.create_user()
    tokens = await harness.login()
    responses = await asyncio.gather(
        *(_refresh(harness, tokens["refresh_token"]) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [200] * 10
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1
    assert successors != {tokens["refresh_token"]}
    for response in responses:
        assert await _status(harness, response.json()) == 200
    # The session lives on: the one successor rotates normally.
    after = await _refresh(harness, successors.pop())
    assert after.status_code == 200
    assert await _status(harness, after.json()) == 200


async def test_a_repeat_within_the_interval_gets_the_same_successor(harness: Harness) -> None:
    await harness.create_user()
    tokens = await harness.login()
    first = (await _refresh(harness, tokens["refresh_token"])).json()
    again = await _refresh(harness, tokens["refresh_token"])
    assert again.status_code == 200
    assert again.json()["refresh_token"] == first["refresh_token"]
    assert again.json()["access_token"] != first["access_token"]
    events = [e.event for e in await _audit(harness)]
    assert "refresh_token_reuse" not in events


async def test_no_reuse_interval_means_any_reuse_revokes(make_harness: Any) -> None:
    harness = await make_harness(refresh_reuse_interval_seconds=0)
    await harness.create_user()
    clock = _Clock()
    harness.auth.core.clock = clock
    tokens = await harness.login()
    second = (await _refresh(harness, tokens["refresh_token"])).json()
    clock.skipped = timedelta(milliseconds=1)
    assert (await _refresh(harness, tokens["refresh_token"])).status_code == 401
    assert await _status(harness, second) == 401


async def test_the_kept_successor_is_sealed_under_its_predecessor(harness: Harness) -> None:
    from sqlalchemy import select

    from authdb.db.models import RefreshToken

    await harness.create_user()
    tokens = await harness.login()
    successor = (await _refresh(harness, tokens["refresh_token"])).json()["refresh_token"]
    async with harness.auth.core.sessionmaker() as db:
        sealed = list((await db.scalars(select(RefreshToken.successor))).all())
    stored = [value for value in sealed if value is not None]
    assert len(stored) == 1
    # A database reader sees neither token; only the predecessor's holder can open it.
    assert successor.encode() not in stored[0]
    assert sessions.open_successor(tokens["refresh_token"], stored[0]) == successor
    assert sessions.open_successor(successor, stored[0]) is None


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
