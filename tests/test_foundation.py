"""The tutorial's contract: POST /token and GET /users/me on a real users table."""

from __future__ import annotations

import httpx

from authdb import Auth, Settings
from authdb.app import create_app
from tests.cli import run_cli
from tests.conftest import PASSWORD, Harness, free_port


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


async def test_readyz_reports_an_unreachable_database() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    auth = Auth(Settings(_env_file=None, database_url=url))  # type: ignore[call-arg]
    transport = httpx.ASGITransport(app=create_app(auth=auth))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "Traceback" not in ready.text
    await auth.shutdown()


def test_bad_settings_are_one_line_cli_errors() -> None:
    result = run_cli(
        ["migrate"],
        env={"AUTHDB_SECRET_KEY": "short", "AUTHDB_ACCESS_TOKEN_EXPIRE_MINUTES": "abc"},
    )
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert "AUTHDB_SECRET_KEY" in result.stderr
    assert "AUTHDB_ACCESS_TOKEN_EXPIRE_MINUTES" in result.stderr


async def test_validation_errors_do_not_echo_secrets(harness: Harness) -> None:
    secret = "s3cret-" + "x" * 5000
    response = await harness.client.post("/token", data={"username": "alice", "password": secret})
    assert response.status_code == 422
    assert "s3cret" not in response.text
    assert response.json()["detail"][0]["loc"] == ["body", "password"]


async def test_control_characters_in_login_name_are_not_a_server_error(harness: Harness) -> None:
    response = await harness.client.post(
        "/token", data={"username": "ali\x00ce", "password": PASSWORD}
    )
    assert response.status_code == 422
