"""``/token`` speaks OAuth 2.0 errors (RFC 6749 §5.2): a real client sees a failure as one.

Authlib's ``AsyncOAuth2Client`` drives the app in-process, on both databases, as an application
would use it; every failure must raise in the client instead of coming back as a "token".
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from authdb.app import create_app
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
TOKEN_URL = "http://testserver/token"
# RFC 6749 §5.2: the characters error_description may hold.
DESCRIPTION = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]+$")


@pytest.fixture
async def oauth_harness(make_harness: MakeHarness) -> Harness:
    # No reuse interval: a refresh token presented twice is a reuse at once.
    harness = await make_harness(login_max_failures=3, refresh_reuse_interval_seconds=0)
    await harness.create_user("alice")
    return harness


@pytest.fixture
async def oauth_client(oauth_harness: Harness) -> AsyncIterator[AsyncOAuth2Client]:
    """Authlib's client, a public client (no secret) talking to the started app."""
    app = create_app(auth=oauth_harness.auth)
    async with AsyncOAuth2Client(
        client_id="my-app",
        token_endpoint_auth_method="none",
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
    ) as client:
        yield client


async def _password_grant(client: AsyncOAuth2Client, username: str, password: str) -> Any:
    return await client.fetch_token(
        TOKEN_URL, grant_type="password", username=username, password=password
    )


async def test_password_grant_and_refresh_work_with_authlib(
    oauth_client: AsyncOAuth2Client,
) -> None:
    token = await _password_grant(oauth_client, "alice", PASSWORD)
    assert token["token_type"] == "bearer"
    assert token["expires_in"] > 0
    me = await oauth_client.get("/users/me")  # Authlib adds the bearer token itself
    assert me.status_code == 200
    assert me.json()["username"] == "alice"
    refreshed = await oauth_client.refresh_token(TOKEN_URL, refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert refreshed["access_token"] != token["access_token"]


async def test_wrong_password_raises_invalid_grant_in_authlib(
    oauth_client: AsyncOAuth2Client,
) -> None:
    with pytest.raises(OAuthError) as failed:
        await _password_grant(oauth_client, "alice", "not the password")
    assert failed.value.error == "invalid_grant"
    assert failed.value.description == "Incorrect username or password"
    assert oauth_client.token is None


async def test_unknown_user_raises_the_same_invalid_grant(
    oauth_client: AsyncOAuth2Client,
) -> None:
    with pytest.raises(OAuthError) as failed:
        await _password_grant(oauth_client, "nobody", "not the password")
    assert (failed.value.error, failed.value.description) == (
        "invalid_grant",
        "Incorrect username or password",
    )


async def test_bad_refresh_token_raises_invalid_grant(oauth_client: AsyncOAuth2Client) -> None:
    with pytest.raises(OAuthError) as failed:
        await oauth_client.refresh_token(TOKEN_URL, refresh_token="not-a-refresh-token")
    assert failed.value.error == "invalid_grant"
    assert failed.value.description == "Invalid refresh token"


async def test_reused_refresh_token_raises_invalid_grant(
    oauth_client: AsyncOAuth2Client,
) -> None:
    token = await _password_grant(oauth_client, "alice", PASSWORD)
    first = token["refresh_token"]
    await oauth_client.refresh_token(TOKEN_URL, refresh_token=first)
    with pytest.raises(OAuthError) as failed:
        await oauth_client.refresh_token(TOKEN_URL, refresh_token=first)
    assert failed.value.error == "invalid_grant"


async def test_locked_account_raises_invalid_grant(oauth_client: AsyncOAuth2Client) -> None:
    for _ in range(3):
        with pytest.raises(OAuthError):
            await _password_grant(oauth_client, "alice", "not the password")
    with pytest.raises(OAuthError) as locked:
        await _password_grant(oauth_client, "alice", PASSWORD)  # right, but locked
    assert locked.value.error == "invalid_grant"
    assert locked.value.description == "Too many requests"


async def test_inactive_user_raises_invalid_grant(
    oauth_harness: Harness, oauth_client: AsyncOAuth2Client
) -> None:
    await oauth_harness.create_user("bob", disabled=True)
    with pytest.raises(OAuthError) as failed:
        await _password_grant(oauth_client, "bob", PASSWORD)
    assert (failed.value.error, failed.value.description) == ("invalid_grant", "Inactive user")


async def test_unverified_user_raises_invalid_grant_when_verification_is_required(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(require_verified_email=True)
    await harness.create_user("carol", is_verified=False)
    transport = httpx.ASGITransport(app=create_app(auth=harness.auth))
    async with AsyncOAuth2Client(
        client_id="my-app", token_endpoint_auth_method="none", transport=transport
    ) as client:
        with pytest.raises(OAuthError) as failed:
            await _password_grant(client, "carol", PASSWORD)
    assert (failed.value.error, failed.value.description) == (
        "invalid_grant",
        "Email not verified",
    )


async def test_unsupported_grant_type_raises_in_authlib(oauth_client: AsyncOAuth2Client) -> None:
    with pytest.raises(OAuthError) as failed:
        await oauth_client.fetch_token(TOKEN_URL, grant_type="client_credentials")
    assert failed.value.error == "unsupported_grant_type"


async def test_missing_password_raises_invalid_request(oauth_client: AsyncOAuth2Client) -> None:
    with pytest.raises(OAuthError) as failed:
        await oauth_client.fetch_token(TOKEN_URL, grant_type="password", username="alice")
    assert failed.value.error == "invalid_request"
    assert failed.value.description == "password: Field required"


# --- the wire format, for clients that read it themselves ----------------------------------------


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"username": "alice", "password": "wrong password"}, 401, "invalid_grant"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, 401, "invalid_grant"),
        ({"grant_type": "implicit"}, 400, "unsupported_grant_type"),
        ({"username": "alice"}, 422, "invalid_request"),
        ({"grant_type": "refresh_token"}, 422, "invalid_request"),
        ({"username": "a" * 5000, "password": "x"}, 422, "invalid_request"),
        ({"username": "al\x00ice", "password": "x"}, 422, "invalid_request"),
    ],
)
async def test_every_token_error_carries_error_and_description_beside_detail(
    oauth_harness: Harness, form: dict[str, str], status: int, error: str
) -> None:
    response = await oauth_harness.client.post("/token", data=form)
    body = response.json()
    assert response.status_code == status
    assert body["error"] == error
    assert DESCRIPTION.match(body["error_description"])
    assert "detail" in body
    assert response.headers["cache-control"] == "no-store"
    if status == 422:
        # The detail keeps FastAPI's list shape; the description summarises it.
        assert isinstance(body["detail"], list)
        assert all({"loc", "msg", "type"} <= set(item) for item in body["detail"])
    else:
        assert body["error_description"] == body["detail"]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


async def test_a_rate_limited_address_gets_invalid_grant_with_retry_after(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(rate_limit_login_failures="1/minute", login_max_failures=100)
    await harness.create_user("alice")
    await harness.client.post("/token", data={"username": "alice", "password": "wrong password"})
    limited = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert limited.status_code == 429
    assert limited.json() == {
        "detail": "Too many requests",
        "error": "invalid_grant",
        "error_description": "Too many requests",
    }
    assert int(limited.headers["retry-after"]) > 0


async def test_other_routes_keep_the_plain_detail_body(oauth_harness: Harness) -> None:
    response = await oauth_harness.client.get("/users/me", headers={"Authorization": "Bearer x"})
    assert response.json() == {"detail": "Could not validate credentials"}
