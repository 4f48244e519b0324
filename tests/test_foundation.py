"""The tutorial's contract: POST /token and GET /users/me on a real users table."""

from __future__ import annotations

from tests.conftest import PASSWORD, Harness


async def test_login_returns_bearer_token_and_me_works(harness: Harness) -> None:
    await harness.create_user("alice", full_name="Alice Liddell")
    response = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    me = await harness.client.get(
        "/users/me/", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    user = me.json()
    assert user["username"] == "alice"
    assert user["full_name"] == "Alice Liddell"
    assert user["disabled"] is False
    assert user["created_at"].endswith(("Z", "+00:00"))
    assert "hashed_password" not in user
