"""Access tokens: pinned algorithm, required claims, issuer/audience, expiry and tampering."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from tests.conftest import Harness

SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"


async def _claims(harness: Harness) -> dict[str, object]:
    await harness.create_user("alice")
    token = (await harness.login())["access_token"]
    return dict(jwt.decode(token, SECRET, algorithms=["HS256"], audience="authdb"))


async def _me(harness: Harness, token: str) -> tuple[int, dict[str, object], str | None]:
    response = await harness.client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json(), response.headers.get("www-authenticate")


async def test_access_token_carries_required_claims(harness: Harness) -> None:
    claims = await _claims(harness)
    assert set(claims) >= {"sub", "exp", "iat", "jti", "iss", "aud", "sid"}
    assert claims["iss"] == "authdb"
    assert claims["aud"] == "authdb"
    assert isinstance(claims["sub"], str)


def _forge(claims: dict[str, object], **changes: object) -> dict[str, object]:
    return {**claims, **changes}


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "someone-else"},
        {"aud": "another-app"},
        {"exp": datetime.now(UTC) - timedelta(seconds=5)},
        {"sub": "999"},
        {"sid": 999},
        {"sid": "1"},
        {"sub": "not-a-number"},
    ],
)
async def test_token_with_wrong_claims_is_refused(
    harness: Harness, change: dict[str, object]
) -> None:
    token = jwt.encode(_forge(await _claims(harness), **change), SECRET, algorithm="HS256")
    status, body, challenge = await _me(harness, token)
    assert (status, body, challenge) == (
        401,
        {"detail": "Could not validate credentials"},
        "Bearer",
    )


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "jti", "iss", "aud", "sid"])
async def test_token_missing_a_claim_is_refused(harness: Harness, missing: str) -> None:
    claims = await _claims(harness)
    del claims[missing]
    status, _, _ = await _me(harness, jwt.encode(claims, SECRET, algorithm="HS256"))
    assert status == 401


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_alg_none_and_other_algorithms_are_refused(harness: Harness) -> None:
    claims = await _claims(harness)
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert (await _me(harness, unsigned))[0] == 401
    hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    assert (await _me(harness, hs512))[0] == 401
    other_key = jwt.encode(claims, "another-secret-key-of-sufficient-length-xyz", algorithm="HS256")
    assert (await _me(harness, other_key))[0] == 401


async def test_tampered_token_is_refused(harness: Harness) -> None:
    await harness.create_user("alice")
    token = (await harness.login())["access_token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "2"
    assert (await _me(harness, f"{header}.{_b64(claims)}.{signature}"))[0] == 401
    assert (await _me(harness, "garbage"))[0] == 401


async def test_missing_token_gets_fastapi_default(harness: Harness) -> None:
    response = await harness.client.get("/users/me")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_expired_token_via_clock(harness: Harness) -> None:
    await harness.create_user("alice")
    headers = await harness.bearer()
    assert (await harness.client.get("/users/me", headers=headers)).status_code == 200
    # Thirty-one minutes later the 30-minute token has expired; PyJWT reads the real clock,
    # so move the token's clock back instead of the server's forward.
    core = harness.auth.core
    core.clock = lambda: datetime.now(UTC) - timedelta(minutes=31)
    old = (await harness.login())["access_token"]
    core.clock = lambda: datetime.now(UTC)
    assert (await _me(harness, old))[0] == 401
