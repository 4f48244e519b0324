"""``/.well-known/oauth-authorization-server`` (RFC 8414) and ``/.well-known/jwks.json``
(RFC 7517): what they advertise, that it is built from ``AUTHDB_PUBLIC_URL`` (never the Host
header), that the advertised endpoints work, and that no private key member ever leaks.

Every test runs on SQLite and PostgreSQL, under HS256 and under key-pair algorithms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.services import provisioning, signing_keys
from authdb.services.core import CLI_CLIENT
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
METADATA = "/.well-known/oauth-authorization-server"
JWKS = "/.well-known/jwks.json"
PUBLIC_URL = "https://auth.example.test"
ISSUER = "https://issuer.example.test/tenant"
MFA_GRANT = "urn:authdb:params:oauth:grant-type:mfa"
# RFC 7518 6.2.2 and 6.3.2: the members of a private EC, OKP or RSA key.
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
# Headers a hostile client or a misconfigured proxy may send to steer absolute URLs.
HOSTILE = {
    "Host": "evil.example",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Prefix": "/evil",
    "Forwarded": "host=evil.example;proto=http",
}


@pytest.fixture(params=["HS256", "ES256"])
def algorithm(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def discovery(make_harness: MakeHarness, algorithm: str) -> Harness:
    harness = await make_harness(jwt_algorithm=algorithm, public_url=PUBLIC_URL, jwt_issuer=ISSUER)
    await harness.create_user("alice")
    return harness


def _client_for(app: Any, base_url: str = "http://testserver", **transport: Any) -> Any:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, **transport), base_url=base_url)


async def _metadata(client: httpx.AsyncClient, path: str = METADATA) -> dict[str, Any]:
    response = await client.get(path, headers=HOSTILE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "evil" not in response.text
    return dict(response.json())


# --- RFC 8414 metadata ----------------------------------------------------------------------


async def test_metadata_advertises_issuer_and_endpoints_under_public_url(
    discovery: Harness,
) -> None:
    """issuer is AUTHDB_JWT_ISSUER, endpoints are absolute URLs under AUTHDB_PUBLIC_URL even
    though the request names a hostile Host (and forwarding headers)."""
    metadata = await _metadata(discovery.client)
    assert metadata["issuer"] == ISSUER
    assert metadata["token_endpoint"] == f"{PUBLIC_URL}/token"
    assert metadata["jwks_uri"] == f"{PUBLIC_URL}{JWKS}"
    assert metadata["revocation_endpoint"] == f"{PUBLIC_URL}/revoke"
    assert {"password", "refresh_token", MFA_GRANT} <= set(metadata["grant_types_supported"])
    assert metadata["token_endpoint_auth_methods_supported"] == ["none"]
    # RFC 8414 2: no authorization endpoint, so no response type; never "code" or "token".
    assert "code" not in metadata.get("response_types_supported", [])
    assert metadata.get("revocation_endpoint_auth_methods_supported", ["none"]) == ["none"]


async def test_metadata_issuer_is_the_iss_of_issued_access_tokens(discovery: Harness) -> None:
    """A resource server comparing ``iss`` against the advertised issuer accepts our tokens."""
    metadata = await _metadata(discovery.client)
    tokens = await discovery.login()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["iss"] == metadata["issuer"]


async def test_public_url_with_a_path_and_trailing_slash(make_harness: MakeHarness) -> None:
    """A PUBLIC_URL with a path (and a trailing slash) is kept whole, without a double slash."""
    harness = await make_harness(public_url="https://example.test/sso/")
    metadata = await _metadata(harness.client)
    assert metadata["token_endpoint"] == "https://example.test/sso/token"
    assert metadata["jwks_uri"] == f"https://example.test/sso{JWKS}"
    assert metadata["revocation_endpoint"] == "https://example.test/sso/revoke"
    # The issuer is the setting, not derived from the URL.
    assert metadata["issuer"] == "authdb"


async def test_advertised_endpoints_work(discovery: Harness, algorithm: str) -> None:
    """Following the metadata (and nothing else): the token endpoint gives tokens, the JWKS
    verifies them (key pairs), the revocation endpoint ends the session."""
    async with _client_for(create_app(auth=discovery.auth), base_url=PUBLIC_URL) as client:
        metadata = await _metadata(client)
        issued = await client.post(
            metadata["token_endpoint"], data={"username": "alice", "password": PASSWORD}
        )
        assert issued.status_code == 200, issued.text
        tokens = issued.json()
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await client.get("/users/me", headers=bearer)).status_code == 200

        jwks = await client.get(metadata["jwks_uri"])
        assert jwks.status_code == 200
        keys = jwks.json()["keys"]
        if algorithm == "HS256":
            assert keys == []
        else:
            _verify_with_jwks(tokens["access_token"], keys, metadata["issuer"], discovery)

        revoked = await client.post(
            metadata["revocation_endpoint"], data={"token": tokens["refresh_token"]}
        )
        assert revoked.status_code == 200
        assert (await client.get("/users/me", headers=bearer)).status_code == 401
        again = await client.post(
            metadata["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        )
        assert again.status_code == 401


def _verify_with_jwks(token: str, keys: list[dict[str, Any]], issuer: str, h: Harness) -> None:
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [key for key in keys if key["kid"] == kid]
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[jwk["alg"]],
        issuer=issuer,
        audience=h.auth.settings.jwt_audience,
    )
    assert claims["sub"]


async def test_metadata_and_jwks_tell_shared_caches_to_revalidate(discovery: Harness) -> None:
    """A rotation must not hide behind a shared cache: neither answer is cacheable as is."""
    for path in (METADATA, JWKS):
        response = await discovery.client.get(path)
        cache = response.headers.get("cache-control", "")
        assert "no-cache" in cache or "no-store" in cache or "max-age=0" in cache, (path, cache)


# --- mounted in an application of one's own ----------------------------------------------------


@asynccontextmanager
async def _started_host_app(settings: Settings) -> AsyncIterator[tuple[Auth, FastAPI]]:
    """``auth.router`` included under ``/auth`` in a host FastAPI application, started, with
    the user alice."""
    auth = Auth(settings)
    app = FastAPI(lifespan=auth.lifespan)
    app.include_router(auth.router, prefix="/auth")
    await migrate.upgrade(auth.core.engine)
    async with app.router.lifespan_context(app):
        await provisioning.create_user(
            auth.core,
            username="alice",
            email="alice@example.com",
            password=PASSWORD,
            client=CLI_CLIENT,
            is_verified=True,
        )
        yield auth, app


@pytest.fixture
async def host_app(
    make_settings: Callable[..., Settings], algorithm: str
) -> AsyncIterator[tuple[Auth, FastAPI]]:
    """``auth.router`` included under ``/auth`` in a host FastAPI application, started."""
    settings = make_settings(jwt_algorithm=algorithm, public_url=PUBLIC_URL)
    async with _started_host_app(settings) as started:
        yield started


async def test_router_under_a_prefix_advertises_prefixed_endpoints(
    host_app: tuple[Auth, FastAPI],
) -> None:
    """``include_router(auth.router, prefix="/auth")``: every endpoint carries /auth and works."""
    _, app = host_app
    async with _client_for(app, base_url=PUBLIC_URL) as client:
        assert (await client.get(METADATA)).status_code == 404  # only under the prefix
        metadata = await _metadata(client, f"/auth{METADATA}")
        assert metadata["token_endpoint"] == f"{PUBLIC_URL}/auth/token"
        assert metadata["jwks_uri"] == f"{PUBLIC_URL}/auth{JWKS}"
        assert metadata["revocation_endpoint"] == f"{PUBLIC_URL}/auth/revoke"
        issued = await client.post(
            metadata["token_endpoint"], data={"username": "alice", "password": PASSWORD}
        )
        assert issued.status_code == 200, issued.text
        assert (await client.get(metadata["jwks_uri"])).status_code == 200
        tokens = issued.json()
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await client.get("/auth/users/me", headers=bearer)).status_code == 200
        revoked = await client.post(
            metadata["revocation_endpoint"], data={"token": tokens["access_token"]}
        )
        assert revoked.status_code == 200
        assert (await client.get("/auth/users/me", headers=bearer)).status_code == 401


@pytest.mark.parametrize("public_path", ["", "/api"])
async def test_prefixed_router_behind_a_root_path(
    make_settings: Callable[..., Settings], public_path: str
) -> None:
    """Served under an ASGI ``root_path`` (``serve --root-path /api`` behind a proxy that
    strips it), the endpoints carry the root path and the router's prefix, once: whether
    ``PUBLIC_URL`` is the bare origin or names the root path too (``.../api``, as the
    emailed links need it)."""
    settings = make_settings(public_url=f"{PUBLIC_URL}{public_path}")
    async with (
        _started_host_app(settings) as (_, app),
        _client_for(app, base_url=PUBLIC_URL, root_path="/api") as client,
    ):
        metadata = await _metadata(client, f"/api/auth{METADATA}")
        assert metadata["token_endpoint"] == f"{PUBLIC_URL}/api/auth/token"
        assert metadata["jwks_uri"] == f"{PUBLIC_URL}/api/auth{JWKS}"
        assert metadata["revocation_endpoint"] == f"{PUBLIC_URL}/api/auth/revoke"
        issued = await client.post(
            metadata["token_endpoint"], data={"username": "alice", "password": PASSWORD}
        )
        assert issued.status_code == 200, issued.text


async def test_one_router_under_two_prefixes_names_its_own_endpoints(
    make_settings: Callable[..., Settings],
) -> None:
    """Included twice (``/v1`` and ``/v2``), each mount's metadata names its own endpoints,
    not the first route of that name in the app."""
    auth = Auth(make_settings(public_url=PUBLIC_URL))
    app = FastAPI(lifespan=auth.lifespan)
    app.include_router(auth.router, prefix="/v1")
    app.include_router(auth.router, prefix="/v2")
    await migrate.upgrade(auth.core.engine)
    async with app.router.lifespan_context(app), _client_for(app, base_url=PUBLIC_URL) as client:
        for prefix in ("/v1", "/v2"):
            metadata = await _metadata(client, f"{prefix}{METADATA}")
            assert metadata["token_endpoint"] == f"{PUBLIC_URL}{prefix}/token"
            assert metadata["jwks_uri"] == f"{PUBLIC_URL}{prefix}{JWKS}"
            assert metadata["revocation_endpoint"] == f"{PUBLIC_URL}{prefix}/revoke"


async def test_service_app_mounted_under_a_path(discovery: Harness) -> None:
    """The whole service app mounted at /sso of a host app: the mount point is in every URL."""
    host = FastAPI()
    host.mount("/sso", create_app(auth=discovery.auth))
    async with _client_for(host, base_url=PUBLIC_URL) as client:
        metadata = await _metadata(client, f"/sso{METADATA}")
        assert metadata["token_endpoint"] == f"{PUBLIC_URL}/sso/token"
        assert metadata["revocation_endpoint"] == f"{PUBLIC_URL}/sso/revoke"
        issued = await client.post(
            metadata["token_endpoint"], data={"username": "alice", "password": PASSWORD}
        )
        assert issued.status_code == 200, issued.text


# --- JWKS -------------------------------------------------------------------------------------


def _assert_public_only(body: dict[str, Any]) -> None:
    assert set(body) == {"keys"}
    for key in body["keys"]:
        assert not PRIVATE_MEMBERS & set(key), key
        assert {"kid", "alg", "use", "kty"} <= set(key), key
        assert key["use"] == "sig"
        assert isinstance(key["kid"], str) and key["kid"]


async def test_jwks_is_empty_under_hs256(make_harness: MakeHarness) -> None:
    """HS256 tokens are verified with the secret key: there is nothing public to list."""
    harness = await make_harness(jwt_algorithm="HS256")
    response = await harness.client.get(JWKS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"keys": []}


@pytest.mark.parametrize("key_algorithm", ["RS256", "ES256", "EdDSA"])
async def test_jwks_lists_the_public_keys_only(
    make_harness: MakeHarness, key_algorithm: str
) -> None:
    """Two public keys with kid/alg/use and no private member: the current key (the kid of
    issued tokens, which verify with it) and the next key, published ahead of its rotation."""
    harness = await make_harness(jwt_algorithm=key_algorithm)
    await harness.create_user("alice")
    response = await harness.client.get(JWKS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    _assert_public_only(body)
    assert [key["alg"] for key in body["keys"]] == [key_algorithm, key_algorithm]
    states = {key.kid: key.state for key in await signing_keys.list_keys(harness.auth.core)}
    assert {key["kid"]: states[key["kid"]] for key in body["keys"]} == {
        kid: state for kid, state in states.items() if state in ("current", "next")
    }
    assert sorted(states.values()) == ["current", "next"]
    tokens = await harness.login()
    assert states[jwt.get_unverified_header(tokens["access_token"])["kid"]] == "current"
    issuer = harness.auth.settings.jwt_issuer
    _verify_with_jwks(tokens["access_token"], body["keys"], issuer, harness)


@pytest.mark.parametrize("key_algorithm", ["RS256", "ES256"])
async def test_jwks_after_rotation_lists_every_live_key_still_public_only(
    make_harness: MakeHarness, key_algorithm: str
) -> None:
    """After a rotation the previous key stays listed (its tokens still verify) beside the new
    current key (the former next key) and a new next key; none shows a private member; old
    and new tokens both verify against the set."""
    harness = await make_harness(jwt_algorithm=key_algorithm)
    await harness.create_user("alice")
    before = await harness.login()
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    published_before = {key["kid"] for key in (await harness.client.get(JWKS)).json()["keys"]}
    new_kid = await signing_keys.rotate(harness.auth.core, CLI_CLIENT)
    assert published_before == {old_kid, new_kid}, "the new key was published before"
    after = await harness.login()
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid
    body = (await harness.client.get(JWKS)).json()
    _assert_public_only(body)
    kids = {key["kid"] for key in body["keys"]}
    assert len(kids) == len(body["keys"]) == 3
    assert {old_kid, new_kid} < kids
    issuer = harness.auth.settings.jwt_issuer
    for tokens in (before, after):
        _verify_with_jwks(tokens["access_token"], body["keys"], issuer, harness)
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await harness.client.get("/users/me", headers=bearer)).status_code == 200
