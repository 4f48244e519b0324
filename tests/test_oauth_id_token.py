"""``authdb.oauth.oidc``: discovery and ID token validation (OpenID Connect Core 1.0, section
3.1.3.7) against a small issuer served on 127.0.0.1 by uvicorn in a thread, whose discovery
document and JWKS each test sets. Every token that fails a check raises ProviderFailed.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from authdb.oauth import ProviderDenied, ProviderFailed, error_code
from authdb.oauth.oidc import MAX_DOCUMENT_BYTES, Discovery, Metadata, validate_id_token
from authdb.oauth.providers import _github_email, _token_response

CLIENT_ID = "client-123"
CLIENT_SECRET = "a-client-secret-that-is-long-enough-for-hs256-0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk_of(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    data = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": alg}


@dataclass
class Issuer:
    """One test's issuer at ``{base}/{tid}``: what it serves and how often its JWKS was read."""

    base: str
    tid: str = field(default_factory=lambda: secrets.token_hex(6))
    discovery: Any = None
    jwks: Any = None
    jwks_fetches: int = 0

    @property
    def url(self) -> str:
        return f"{self.base}/{self.tid}"

    def document(self, **changes: Any) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/auth",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": f"{self.url}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
            **changes,
        }


class IssuerServer:
    """Serves every registered Issuer's discovery document and JWKS."""

    def __init__(self) -> None:
        self.issuers: dict[str, Issuer] = {}
        self.app = Starlette(routes=[Route("/{tid}/{rest:path}", self.serve)])
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def serve(self, request: Request) -> Response:
        issuer = self.issuers.get(request.path_params["tid"])
        rest = request.path_params["rest"]
        if issuer is None:
            return Response(status_code=404)
        if rest == ".well-known/openid-configuration":
            body = issuer.discovery
        elif rest == "jwks":
            issuer.jwks_fetches += 1
            body = issuer.jwks
        else:
            return Response(status_code=404)
        if body is None:
            return Response(status_code=404)
        if isinstance(body, bytes):
            return Response(body, media_type="application/json")
        return JSONResponse(body)

    def new_issuer(self, **changes: Any) -> Issuer:
        issuer = Issuer(f"http://127.0.0.1:{self.port}")
        issuer.discovery = issuer.document(**changes)
        issuer.jwks = {"keys": [jwk_of(RSA_KEY, "k1", "RS256")]}
        self.issuers[issuer.tid] = issuer
        return issuer

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="oidc-issuer", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test issuer did not start")
            time.sleep(0.01)
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
            self._sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[IssuerServer]:
    running = IssuerServer()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def issuer(server: IssuerServer) -> Issuer:
    return server.new_issuer()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


class FakeClock:
    """``time.monotonic`` for a Discovery, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims_for(issuer: Issuer, nonce: str = "the-nonce", **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer.url,
        "sub": "subject-1",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": nonce,
        "email": "ada@corp.example",
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def sign(claims: dict[str, Any], key: Any = RSA_KEY, alg: str = "RS256", kid: str = "k1") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


async def validate(
    http: httpx.AsyncClient,
    issuer: Issuer | Discovery,
    token: object,
    nonce: str = "the-nonce",
) -> dict[str, Any]:
    discovery = issuer if isinstance(issuer, Discovery) else Discovery(issuer.url)
    return await validate_id_token(http, discovery, token, client_id=CLIENT_ID, nonce=nonce)


async def refused(
    http: httpx.AsyncClient, issuer: Issuer | Discovery, token: object, nonce: str = "the-nonce"
) -> str:
    with pytest.raises(ProviderFailed) as caught:
        await validate(http, issuer, token, nonce)
    return str(caught.value)


# --- the good token, then each way to spoil it --------------------------------------------------


async def test_a_valid_id_token_gives_its_claims(http: httpx.AsyncClient, issuer: Issuer) -> None:
    claims = await validate(http, issuer, sign(claims_for(issuer)))
    assert claims["sub"] == "subject-1"
    assert claims["email"] == "ada@corp.example"
    # Several audiences are fine when azp names this client.
    several = claims_for(issuer, aud=[CLIENT_ID, "other"], azp=CLIENT_ID)
    assert (await validate(http, issuer, sign(several)))["azp"] == CLIENT_ID


async def test_a_wrong_signature_is_refused(http: httpx.AsyncClient, issuer: Issuer) -> None:
    # Signed by another key under the published key's kid.
    await refused(http, issuer, sign(claims_for(issuer), key=OTHER_RSA_KEY))
    # A valid token with its signature changed.
    head, body, signature = sign(claims_for(issuer)).split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    await refused(http, issuer, f"{head}.{body}.{flipped}")
    # Claims changed under a valid signature.
    other = base64.urlsafe_b64encode(
        json.dumps(claims_for(issuer, sub="someone-else")).encode()
    ).rstrip(b"=")
    await refused(http, issuer, f"{head}.{other.decode()}.{signature}")


async def test_an_unknown_kid_refetches_the_keys_once_a_minute_at_most(
    http: httpx.AsyncClient, issuer: Issuer
) -> None:
    clock = FakeClock()
    discovery = Discovery(issuer.url, _clock=clock)
    assert await validate(http, discovery, sign(claims_for(issuer)))
    assert issuer.jwks_fetches == 1
    # The provider rotates to k2; a token of k2 arrives within the minute: no refetch.
    issuer.jwks = {"keys": [jwk_of(OTHER_RSA_KEY, "k2", "RS256")]}
    rotated = sign(claims_for(issuer), key=OTHER_RSA_KEY, kid="k2")
    clock.now += 30
    await refused(http, discovery, rotated)
    assert issuer.jwks_fetches == 1
    # After the minute: one refetch, and k2 is found.
    clock.now += 31
    assert (await validate(http, discovery, rotated))["sub"] == "subject-1"
    assert issuer.jwks_fetches == 2
    # A kid the provider never published: one refetch (after the minute), then refused.
    clock.now += 61
    stranger = sign(claims_for(issuer), key=RSA_KEY, kid="nobody")
    await refused(http, discovery, stranger)
    assert issuer.jwks_fetches == 3
    await refused(http, discovery, stranger)
    assert issuer.jwks_fetches == 3
    # A fresh Discovery with an unknown kid: one fetch, no second.
    fresh = Discovery(issuer.url, _clock=FakeClock())
    await refused(http, fresh, stranger)
    assert issuer.jwks_fetches == 4


async def test_alg_none_is_refused(http: httpx.AsyncClient, issuer: Issuer) -> None:
    claims = claims_for(issuer)
    message = await refused(http, issuer, unsigned(claims, {"alg": "none", "kid": "k1"}))
    assert "'none'" in message
    await refused(http, issuer, unsigned(claims, {"alg": "none"}))
    # Even when the provider claims to allow it.
    issuer.discovery = issuer.document(id_token_signing_alg_values_supported=["none", "RS256"])
    await refused(http, issuer, unsigned(claims, {"alg": "none"}))


async def test_hs256_signed_with_the_client_secret_is_refused(
    http: httpx.AsyncClient, server: IssuerServer
) -> None:
    # The provider lists HS256: authdb still never takes the client secret as a key.
    issuer = server.new_issuer(id_token_signing_alg_values_supported=["HS256", "RS256"])
    token = jwt.encode(claims_for(issuer), CLIENT_SECRET, algorithm="HS256")
    await refused(http, issuer, token)
    token = jwt.encode(claims_for(issuer), CLIENT_SECRET, algorithm="HS256", headers={"kid": "k1"})
    await refused(http, issuer, token)
    # An HS-only provider is refused at discovery.
    only_hs = server.new_issuer(id_token_signing_alg_values_supported=["HS256"])
    message = await refused(http, only_hs, sign(claims_for(only_hs)))
    assert "no algorithm" in message


async def test_an_algorithm_the_provider_does_not_list_is_refused(
    http: httpx.AsyncClient, server: IssuerServer
) -> None:
    issuer = server.new_issuer(id_token_signing_alg_values_supported=["RS256"])
    issuer.jwks = {"keys": [jwk_of(RSA_KEY, "k1", "RS256"), jwk_of(EC_KEY, "e1", "ES256")]}
    es256 = sign(claims_for(issuer), key=EC_KEY, alg="ES256", kid="e1")
    assert "ES256" in await refused(http, issuer, es256)
    rs384 = sign(claims_for(issuer), alg="RS384")
    await refused(http, issuer, rs384)
    # Listed, the same ES256 token is good.
    issuer.discovery = issuer.document(id_token_signing_alg_values_supported=["RS256", "ES256"])
    assert (await validate(http, issuer, es256))["sub"] == "subject-1"
    # And a key published for RS256 does not verify RS384 even if listed.
    issuer.discovery = issuer.document(id_token_signing_alg_values_supported=["RS256", "RS384"])
    await refused(http, issuer, rs384)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"iss": "http://127.0.0.1:1/other"}, id="wrong-iss"),
        pytest.param({"iss": None}, id="no-iss"),
        pytest.param({"aud": "another-client"}, id="wrong-aud"),
        pytest.param({"aud": None}, id="no-aud"),
        pytest.param({"aud": [CLIENT_ID, "other"]}, id="several-aud-no-azp"),
        pytest.param({"aud": [CLIENT_ID, "other"], "azp": "other"}, id="several-aud-wrong-azp"),
        pytest.param({"aud": ["other", "more"], "azp": CLIENT_ID}, id="azp-but-not-in-aud"),
        pytest.param({"exp": int(time.time()) - 3600}, id="expired"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"iat": None}, id="no-iat"),
        pytest.param({"nonce": None}, id="no-nonce"),
        pytest.param({"nonce": "another-nonce"}, id="wrong-nonce"),
        pytest.param({"nonce": ""}, id="empty-nonce"),
        pytest.param({"nonce": 42}, id="number-nonce"),
        pytest.param({"sub": None}, id="no-sub"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": "x" * 256}, id="long-sub"),
    ],
)
async def test_a_claim_that_fails_its_check_is_refused(
    http: httpx.AsyncClient, issuer: Issuer, changes: dict[str, Any]
) -> None:
    await refused(http, issuer, sign(claims_for(issuer, **changes)))


async def test_not_a_token_is_refused(http: httpx.AsyncClient, issuer: Issuer) -> None:
    for token in (None, "", 42, "not.a.jwt", "a.b", "eyJhbGciOiJSUzI1NiJ9.e30"):
        await refused(http, issuer, token)


# --- discovery ------------------------------------------------------------------------------


async def test_a_discovery_document_naming_another_issuer_is_refused(
    http: httpx.AsyncClient, server: IssuerServer
) -> None:
    issuer = server.new_issuer()
    issuer.discovery = issuer.document(issuer=f"{issuer.url}/")
    assert "another issuer" in await refused(http, issuer, sign(claims_for(issuer)))
    issuer.discovery = issuer.document(issuer="https://accounts.example.com")
    await refused(http, issuer, sign(claims_for(issuer)))
    with pytest.raises(ProviderFailed):
        await Discovery(issuer.url).metadata(http)


@pytest.mark.parametrize("endpoint", ["authorization_endpoint", "token_endpoint", "jwks_uri"])
@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/x",
        "http://10.0.0.1/x",
        "ftp://idp.example.com/x",
        "/relative",
        "",
        None,
    ],
)
async def test_endpoints_must_be_https_outside_loopback(
    http: httpx.AsyncClient, server: IssuerServer, endpoint: str, url: str | None
) -> None:
    issuer = server.new_issuer()
    issuer.discovery = issuer.document(**{endpoint: url})
    with pytest.raises(ProviderFailed, match=endpoint):
        await Discovery(issuer.url).metadata(http)
    assert issuer.jwks_fetches == 0


async def test_a_jwks_too_large_is_refused(http: httpx.AsyncClient, issuer: Issuer) -> None:
    padding = "x" * (MAX_DOCUMENT_BYTES + 1)
    issuer.jwks = json.dumps({"keys": [jwk_of(RSA_KEY, "k1", "RS256")], "pad": padding}).encode()
    assert "larger than" in await refused(http, issuer, sign(claims_for(issuer)))


async def test_a_broken_discovery_or_jwks_is_refused(
    http: httpx.AsyncClient, server: IssuerServer
) -> None:
    cases: list[tuple[str, Any]] = [
        ("discovery", None),  # 404
        ("discovery", b"not json"),
        ("discovery", b"[1, 2]"),
        ("discovery", b"x" * (MAX_DOCUMENT_BYTES + 10)),
        ("jwks", None),
        ("jwks", b"{}"),
        ("jwks", {"keys": "no"}),
        ("jwks", {"keys": [{"kty": "RSA", "kid": "k1"}]}),  # no modulus: skipped, none left
        ("jwks", {"keys": [{**jwk_of(RSA_KEY, "k1", "RS256"), "use": "enc"}]}),
        ("jwks", {"keys": [jwk_of(RSA_KEY, "k1", "RS256"), jwk_of(OTHER_RSA_KEY, "k1", "RS256")]}),
    ]
    for what, body in cases:
        issuer = server.new_issuer()
        setattr(issuer, what, body)
        await refused(http, issuer, sign(claims_for(issuer)))


async def test_a_provider_down_is_provider_failed(http: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    discovery = Discovery(f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderFailed, match="discovery"):
        await discovery.metadata(http)


# --- discovery of an https issuer; the token endpoint's answer; codes and addresses ----------


def https_document(**changes: Any) -> dict[str, Any]:
    issuer = "https://idp.example.com"
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        **changes,
    }


@pytest.mark.parametrize("endpoint", ["authorization_endpoint", "token_endpoint", "jwks_uri"])
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/token", "http://localhost/x", "http://[::1]:8080/x"]
)
def test_an_https_issuer_may_not_name_plain_http_endpoints_even_on_loopback(
    endpoint: str, url: str
) -> None:
    """Else the client secret would travel in clear, to a port of authdb's own host."""
    with pytest.raises(ProviderFailed, match=endpoint):
        Metadata.parse(https_document(**{endpoint: url}), "https://idp.example.com")


def test_http_endpoints_on_loopback_are_only_for_a_loopback_http_issuer() -> None:
    good = Metadata.parse(https_document(), "https://idp.example.com")
    assert good.token_endpoint == "https://idp.example.com/token"
    # An http UserInfo endpoint of an https issuer is not used.
    ignored = https_document(userinfo_endpoint="http://127.0.0.1:9/userinfo")
    assert Metadata.parse(ignored, "https://idp.example.com").userinfo_endpoint is None
    # A development issuer on 127.0.0.1: http there is fine.
    local = "http://127.0.0.1:8080"
    document = {
        "issuer": local,
        "authorization_endpoint": f"{local}/authorize",
        "token_endpoint": "http://localhost:8080/token",
        "jwks_uri": f"{local}/jwks",
        "userinfo_endpoint": f"{local}/userinfo",
    }
    parsed = Metadata.parse(document, local)
    assert parsed.token_endpoint == "http://localhost:8080/token"
    assert parsed.userinfo_endpoint == f"{local}/userinfo"


def test_the_token_endpoints_answer_is_checked() -> None:
    good = _token_response(200, b'{"access_token": "t", "token_type": "bearer"}')
    assert good["access_token"] == "t"
    with pytest.raises(ProviderFailed, match="answer too large") as caught:
        _token_response(200, None)  # _read_capped's answer past MAX_DOCUMENT_BYTES
    assert not isinstance(caught.value, ProviderDenied)
    for status, body in [
        (200, b"not json"),
        (200, b"[1]"),
        (200, b"{}"),
        (200, b'{"access_token": 5}'),
        (500, b'{"access_token": "t"}'),
    ]:
        with pytest.raises(ProviderFailed) as caught:
            _token_response(status, body)
        assert not isinstance(caught.value, ProviderDenied), body
    # An OAuth error: its code cleaned of anything that could forge a line or markup.
    with pytest.raises(ProviderDenied) as denied:
        _token_response(400, json.dumps({"error": "bad\nthing<script>"}).encode())
    assert denied.value.error == "badthingscript"
    assert str(denied.value) == "the provider answered badthingscript"
    with pytest.raises(ProviderDenied) as denied:
        _token_response(200, b'{"error": {"a": 1}, "access_token": "t"}')  # GitHub: HTTP 200
    assert denied.value.error == "an error"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("invalid_grant", "invalid_grant"),
        ("urn.ietf-x_y", "urn.ietf-x_y"),
        ("bad\nthing<script>", "badthingscript"),
        ("\r\n\x00<>", "an error"),
        ("", "an error"),
        ("é" * 10 + "ok", "ok"),
        ("a" * 200, "a" * 64),
        (None, "an error"),
        (42, "an error"),
        (["invalid_grant"], "an error"),
    ],
)
def test_error_codes_keep_only_rfc_6749_characters(given: object, kept: str) -> None:
    assert error_code(given) == kept


def test_github_addresses_with_control_characters_are_skipped() -> None:
    def entry(email: str, *, primary: bool = False, verified: bool = True) -> dict[str, Any]:
        return {"email": email, "primary": primary, "verified": verified}

    nothing = (None, False)
    assert _github_email([entry("a\x00b@x.example", primary=True)]) == nothing
    escaped = entry("a\x1b[0m@x.example", primary=True)
    assert _github_email([escaped, entry("ok@x.example")]) == ("ok@x.example", True)
    # An unverified primary with a control character is not offered either.
    assert _github_email([entry("a\u202eb@x.example", primary=True, verified=False)]) == nothing
    assert _github_email([entry("  ok@x.example ", primary=True)]) == ("ok@x.example", True)
