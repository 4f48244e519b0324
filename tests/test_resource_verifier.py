"""``authdb.resource.TokenVerifier``: another service checking authdb's access tokens.

Two halves:

- a real deployment: ``authdb serve`` (ES256 on SQLite, EdDSA on PostgreSQL) and, as its own
  process, ``tests/resource_app.py`` (a user's other FastAPI service) that knows nothing but
  authdb's JWKS URL; tokens come from ``/token`` over the socket, keys rotate through the CLI.
  The key a rotation makes current was published as the next key before, so a verifier that
  fetched the JWKS before ``keys rotate`` accepts the new tokens without fetching again;
- ``TokenVerifier.verify`` in-process against a small real JWKS server on loopback (a thread
  counting its GETs), with keys made by ``authdb.signing`` and the verifier's clock moved by
  hand (``authdb.resource.time`` replaced), so refetch limits and the retry after a failed
  fetch (503 ``Token keys unavailable`` until a key set was ever fetched) are counted, never
  timed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, get_type_hints

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from authdb import signing
from authdb.db.engine import create_engine
from authdb.db.models import SigningKey
from authdb.resource import AccessTokenClaims, InvalidToken, KeysUnavailable, TokenVerifier
from authdb.sealing import Sealer
from authdb.services import signing_keys
from tests.cli import invoke_cli
from tests.conftest import PASSWORD, free_port, pg_database
from tests.test_multiprocess import prepare, serving

SECRET = "resource-verifier-test-secret-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent
CLAIM_TYPES = get_type_hints(AccessTokenClaims)
DEADLINE_SECONDS = 30.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """``header.payload.`` with an empty signature (what ``alg: none`` looks like)."""
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}."


def _hs256_with(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A hand-made HS256 token (PyJWT refuses to HMAC with a public key; an attacker does not)."""
    signing_input = _unsigned({**header, "alg": "HS256"}, claims)[:-1]
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _signed_raw(header: dict[str, Any], claims: dict[str, Any], private: Any) -> str:
    """A token signed with ``header`` as given (PyJWT checks a header it writes itself)."""
    signing_input = _unsigned(header, claims)[:-1]
    algorithm = jwt.get_algorithm_by_name(header["alg"])
    signature = algorithm.sign(signing_input.encode(), algorithm.prepare_key(private))
    return f"{signing_input}.{_b64(signature)}"


def _claims(**overrides: Any) -> dict[str, Any]:
    """An authdb access token's claims, valid for five minutes."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "42",
        "sid": 7,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "iss": "authdb",
        "aud": "authdb",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _tamper_payload(token: str, **changes: Any) -> str:
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"


def _flip_signature(token: str) -> str:
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{_b64(bytes(raw))}"


def _kid(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


def _assert_typed_claims(claims: dict[str, Any]) -> None:
    """Every AccessTokenClaims key is there with the declared type."""
    assert set(CLAIM_TYPES) <= set(claims), claims
    for name, kind in CLAIM_TYPES.items():
        assert isinstance(claims[name], kind), (name, claims[name])
        assert not isinstance(claims[name], bool), name


# --------------------------------------------------------------------------------------------
# A real deployment: authdb serve + the user's other service as separate processes.
# --------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """A running ``authdb serve``, the resource service in front of its JWKS, and a user."""

    env: dict[str, str]
    database_url: str
    algorithm: str
    authdb: str
    resource: str
    log_dir: Path
    user_id: int = 0

    def token(self) -> str:
        response = httpx.post(
            f"{self.authdb}/token", data={"username": "alice", "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        assert isinstance(token, str)
        return token

    def signing_key(self) -> tuple[str, Any]:
        """authdb's current kid and private key, opened from the database with the secret:
        to make tokens authdb's key really signed but with claims /token never gives."""
        return asyncio.run(_current_private_key(self.database_url))

    def keys(self) -> list[dict[str, Any]]:
        """``authdb keys list --json``."""
        listed = invoke_cli(["keys", "list", "--json"], env=self.env)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert isinstance(rows, list)
        return rows

    def next_kid(self) -> str:
        """The kid of the next key, published and not yet signing."""
        (kid,) = [row["kid"] for row in self.keys() if row["state"] == "next"]
        assert isinstance(kid, str)
        return kid

    def rotate(self) -> str:
        """``authdb keys rotate``; the new current kid it printed."""
        rotated = invoke_cli(["keys", "rotate"], env=self.env)
        assert rotated.returncode == 0, rotated.stderr
        algorithm = re.escape(self.algorithm)
        match = re.fullmatch(rf"new current signing key (\S+) \({algorithm}\)\n", rotated.stdout)
        assert match, rotated.stdout
        return match.group(1)

    def first_token_of(self, kid: str) -> str:
        """Poll /token until authdb serve signs with ``kid`` (it re-reads the keys every
        second); the first such token."""
        tokens: list[str] = []

        def signs_with_it() -> bool:
            tokens.append(self.token())
            return _kid(tokens[-1]) == kid

        _poll(signs_with_it, f"authdb serve signs with {kid}")
        return tokens[-1]


async def _current_private_key(database_url: str) -> tuple[str, Any]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(SigningKey.kid, SigningKey.sealed_private_key).where(
                        SigningKey.activated_at.is_not(None),
                        SigningKey.rotated_at.is_(None),
                        SigningKey.retired_at.is_(None),
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    # The sealing purpose and context authdb uses for signing keys (authdb.services.signing_keys).
    sealer = Sealer(SECRET, purpose=signing_keys._PURPOSE)
    der, _ = sealer.open(row.sealed_private_key, signing_keys._context(row.kid))
    return row.kid, signing.load_private(der)


def _get(base: str, path: str, token: str | None = None, scheme: str = "Bearer") -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"{scheme} {token}".strip()}
    return httpx.get(f"{base}{path}", headers=headers, timeout=10)


def _assert_refused(
    response: httpx.Response, detail: str = "Could not validate credentials"
) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": detail}
    assert response.headers["www-authenticate"] == "Bearer"


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        time.sleep(0.2)


@contextmanager
def resource_service(authdb: str, log_dir: Path, **settings: str) -> Iterator[str]:
    """``tests/resource_app.py`` under uvicorn, its own process; yields its base URL."""
    port = free_port()
    # Nothing of authdb's configuration: the JWKS URL is all the service knows.
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("AUTHDB_")},
        "RESOURCE_JWKS_URL": f"{authdb}/.well-known/jwks.json",
        **{f"RESOURCE_{name.upper()}": value for name, value in settings.items()},
    }
    log_path = log_dir / f"resource-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.resource_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the resource app exited: {log_path.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the resource app did not start: {log_path.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# Each database once and each of the two algorithms once: a deployment is four processes and
# a key rotation, and what the backend or the algorithm changes (key rows, key parsing in the
# verifier) does not depend on the other. Tokens of all three algorithms (RS256 too) are
# verified in-process below.
@pytest.fixture(
    scope="module",
    params=[("sqlite", "ES256"), ("postgresql", "EdDSA")],
    ids=lambda param: "-".join(param),
)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """authdb serve (1 s key refresh) and the resource service (refetch on any unknown kid)."""
    backend, algorithm = request.param
    log_dir = tmp_path_factory.mktemp(f"deployment-{backend}-{algorithm}")
    database = pg_database() if backend == "postgresql" else None
    url = (
        asyncio.run(database.__aenter__())
        if database is not None
        else f"sqlite+aiosqlite:///{log_dir / 'authdb.db'}"
    )
    try:
        env = {
            "AUTHDB_DATABASE_URL": url,
            "AUTHDB_SECRET_KEY": SECRET,
            "AUTHDB_JWT_ALGORITHM": algorithm,
            "AUTHDB_JWT_KEYS_REFRESH_SECONDS": "1",
        }
        asyncio.run(prepare(env, "alice"))  # `authdb migrate` and `createuser`, in-process
        with (
            serving(env, log_dir, 1) as (authdb,),
            # min_refetch 0: the rotation test must not wait out the 30 s default.
            resource_service(authdb, log_dir, min_refetch_seconds="0") as resource,
        ):
            deployment = Deployment(env, url, algorithm, authdb, resource, log_dir)
            me = _get(authdb, "/users/me/", deployment.token())
            assert me.status_code == 200, me.text
            deployment.user_id = me.json()["id"]
            yield deployment
    finally:
        if database is not None:
            asyncio.run(database.__aexit__(None, None, None))


def test_the_other_service_accepts_authdb_tokens(deployment: Deployment) -> None:
    """A token from authdb's /token opens the other service, which sees its claims."""
    token = deployment.token()
    jwks = httpx.get(f"{deployment.authdb}/.well-known/jwks.json").json()["keys"]
    assert {key["kid"]: key["alg"] for key in jwks}[_kid(token)] == deployment.algorithm

    response = _get(deployment.resource, "/claims", token)
    assert response.status_code == 200, response.text
    claims = response.json()
    _assert_typed_claims(claims)
    assert claims["sub"] == str(deployment.user_id)
    assert claims["iss"] == "authdb" and claims["aud"] == "authdb"
    assert claims["exp"] > claims["iat"]
    # sid is the authdb session that issued the token: a second login is another session.
    other = _get(deployment.resource, "/claims", deployment.token()).json()
    assert other["sid"] != claims["sid"] and other["jti"] != claims["jti"]

    orders = _get(deployment.resource, "/orders", token)
    assert orders.json() == [f"orders of user {deployment.user_id}"]


@pytest.mark.parametrize(
    ("scheme", "credentials"),
    [("Bearer", None), ("Bearer", ""), ("Basic", "YWxpY2U6c2VjcmV0"), ("Token", "abc")],
    ids=["no-header", "empty-bearer", "basic", "other-scheme"],
)
def test_no_bearer_token_is_not_authenticated(
    deployment: Deployment, scheme: str, credentials: str | None
) -> None:
    """Without a bearer token the service answers 401 Not authenticated, asking for Bearer."""
    response = _get(deployment.resource, "/claims", credentials, scheme=scheme)
    _assert_refused(response, "Not authenticated")


def test_bad_tokens_are_refused(deployment: Deployment) -> None:
    """Garbage, expired, tampered, foreign and forged tokens: 401 with WWW-Authenticate."""
    token = deployment.token()
    kid, private = deployment.signing_key()
    assert kid == _kid(token), "the key read from the database is the one /token signs with"
    real = jwt.decode(token, options={"verify_signature": False})
    algorithm = deployment.algorithm

    def signed(**changes: Any) -> str:
        return jwt.encode({**real, **changes}, private, algorithm=algorithm, headers={"kid": kid})

    # The control: authdb's own key and good claims are accepted, so each refusal below is
    # for the one thing that is wrong with that token.
    control = _get(deployment.resource, "/claims", signed(jti=uuid.uuid4().hex))
    assert control.status_code == 200, control.text

    now = int(time.time())
    public = signing.public_jwk(private.public_key(), algorithm)
    stranger = signing.generate(algorithm)
    bad = {
        "garbage": "garbage",
        "three garbage parts": "a.b.c",
        "expired": signed(iat=now - 3600, exp=now - 60),
        "wrong audience": signed(aud="billing"),
        "wrong issuer": signed(iss="https://evil.example"),
        "no sid": jwt.encode(
            {k: v for k, v in real.items() if k != "sid"},
            private,
            algorithm=algorithm,
            headers={"kid": kid},
        ),
        "tampered payload": _tamper_payload(token, sub="1"),
        "tampered signature": _flip_signature(token),
        "another key, authdb's kid": jwt.encode(
            real, stranger, algorithm=algorithm, headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(real, stranger, algorithm=algorithm, headers={"kid": "nope"}),
        "authdb's key under the next key's kid": jwt.encode(
            real, private, algorithm=algorithm, headers={"kid": deployment.next_kid()}
        ),
        "no kid": jwt.encode(real, private, algorithm=algorithm),
        "alg none": _unsigned({"alg": "none", "kid": kid, "typ": "JWT"}, real),
        "HS256 keyed with the public key": _hs256_with(
            json.dumps(public).encode(), {"kid": kid, "typ": "JWT"}, real
        ),
        "too long": signed(pad="x" * 9000),
    }
    for name, bad_token in bad.items():
        response = _get(deployment.resource, "/claims", bad_token)
        assert response.status_code == 401, (name, response.text)
        _assert_refused(response)

    # A real authdb token is for audience "authdb": a service expecting "billing" refuses it.
    _assert_refused(_get(deployment.resource, "/billing", token))
    # And the service still works for a good token after all that.
    assert _get(deployment.resource, "/claims", token).status_code == 200


def test_rotation_reaches_the_other_service(deployment: Deployment) -> None:
    """After `authdb keys rotate` the new key's tokens open the other service (it knew the key
    as the next one; a service that cannot refetch for an hour accepts them too) and old
    tokens keep working; `keys retire` ends the old ones everywhere."""
    old_token = deployment.token()
    old_kid = _kid(old_token)
    upcoming = deployment.next_kid()
    # Two more services: one fetches the key set on its first request and then every second
    # (max age); the other fetches it on its first request and then not for an hour.
    with (
        resource_service(
            deployment.authdb, deployment.log_dir, min_refetch_seconds="0", max_age_seconds="1"
        ) as short_lived,
        resource_service(
            deployment.authdb,
            deployment.log_dir,
            min_refetch_seconds="3600",
            max_age_seconds="3600",
        ) as long_lived,
    ):
        for service in (deployment.resource, short_lived, long_lived):
            assert _get(service, "/claims", old_token).status_code == 200

        new_kid = deployment.rotate()
        assert new_kid == upcoming, "rotate made the published next key current"
        new_token = deployment.first_token_of(new_kid)

        response = _get(deployment.resource, "/claims", new_token)
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == str(deployment.user_id)
        assert _get(short_lived, "/claims", new_token).status_code == 200
        # Its only fetch came before the rotation: it knew the new key from there.
        response = _get(long_lived, "/claims", new_token)
        assert response.status_code == 200, response.text
        # Tokens of the replaced key keep working until they expire.
        assert _get(deployment.resource, "/claims", old_token).status_code == 200
        assert _get(deployment.authdb, "/users/me/", old_token).status_code == 200
        jwks = httpx.get(f"{deployment.authdb}/.well-known/jwks.json").json()["keys"]
        assert {old_kid, new_kid, deployment.next_kid()} <= {key["kid"] for key in jwks}

        retired = invoke_cli(["keys", "retire", old_kid], env=deployment.env)
        assert retired.returncode == 0, retired.stderr
        assert retired.stdout.strip() == f"retired {old_kid}"
        _poll(
            lambda: _get(deployment.authdb, "/users/me/", old_token).status_code == 401,
            "authdb refuses the retired key's token",
        )
        # A service whose key set is at most a second old drops the retired key as well.
        _poll(
            lambda: _get(short_lived, "/claims", old_token).status_code == 401,
            "the other service refuses the retired key's token",
        )
        _assert_refused(_get(short_lived, "/claims", old_token))
        assert _get(short_lived, "/claims", new_token).status_code == 200
        assert _get(deployment.resource, "/claims", new_token).status_code == 200
        assert _get(long_lived, "/claims", new_token).status_code == 200


async def test_a_jwks_fetched_before_the_rotation_verifies_the_first_new_token(
    deployment: Deployment,
) -> None:
    """TokenVerifier with an hour's min_refetch and max_age, reading authdb's JWKS through a
    proxy that counts the fetches: one fetch before `keys rotate`, and the first token authdb
    signs after the rotation verifies without another."""
    proxy = JWKSServer()
    proxy.upstream = f"{deployment.authdb}/.well-known/jwks.json"
    try:
        verifier = _verifier(proxy, min_refetch_seconds=3600, max_age_seconds=3600)
        old_token = deployment.token()
        assert (await verifier.verify(old_token))["sub"] == str(deployment.user_id)
        assert proxy.gets == 1
        upcoming = deployment.next_kid()

        new_kid = deployment.rotate()
        assert new_kid == upcoming
        first_new = deployment.first_token_of(new_kid)
        claims = await verifier.verify(first_new)
        assert claims["sub"] == str(deployment.user_id)
        assert (await verifier.verify(old_token))["sub"] == str(deployment.user_id)
        assert proxy.gets == 1, "no refetch: the key was in the JWKS fetched before"
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------------
# TokenVerifier.verify against a JWKS server run by the test.
# --------------------------------------------------------------------------------------------


@dataclass
class Key:
    """A key pair made by authdb.signing, its public JWK, and a way to sign tokens with it."""

    algorithm: str
    private: Any = field(repr=False)
    jwk: dict[str, Any]

    @classmethod
    def new(cls, algorithm: str = "ES256") -> Key:
        private = signing.generate(algorithm)
        return cls(algorithm, private, signing.public_jwk(private.public_key(), algorithm))

    @property
    def kid(self) -> str:
        kid = self.jwk["kid"]
        assert isinstance(kid, str)
        return kid

    def sign(self, kid: str | None = None, **claims: Any) -> str:
        return jwt.encode(
            _claims(**claims),
            self.private,
            algorithm=self.algorithm,
            headers={"kid": kid or self.kid},
        )


class JWKSServer:
    """A JWKS endpoint on 127.0.0.1 (on ``port``, or any free one) in a thread; counts the
    GETs it answers.

    ``mode``: ``ok`` serves ``keys`` (or, with ``upstream`` set, what that URL serves: a
    counting proxy); ``error`` answers 503; ``not_json`` a 200 HTML page; ``not_object`` a
    JSON array. ``delay`` holds each answer that many seconds; ``on_get`` runs in each GET.
    """

    def __init__(self, port: int = 0) -> None:
        self.keys: list[dict[str, Any]] = []
        self.mode = "ok"
        self.delay = 0.0
        self.upstream: str | None = None
        self.on_get: Callable[[], None] | None = None
        # While set, each answer is held until the event is set (a JWKS that hangs).
        self.gate: threading.Event | None = None
        self.gets = 0
        self.answered = 0  # GETs past the gate
        self._count_lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._count_lock:
                    owner.gets += 1
                if owner.delay:
                    time.sleep(owner.delay)
                if owner.on_get is not None:
                    owner.on_get()
                if owner.gate is not None:
                    owner.gate.wait(DEADLINE_SECONDS)
                with owner._count_lock:
                    owner.answered += 1
                if owner.mode == "ok" and owner.upstream is not None:
                    answer = httpx.get(owner.upstream, timeout=10)
                    status, kind = answer.status_code, answer.headers["content-type"]
                    body = answer.content
                elif owner.mode == "error":
                    status, kind, body = 503, "text/plain", b"unavailable"
                elif owner.mode == "not_json":
                    status, kind, body = 200, "text/html", b"<html>sign in to the proxy</html>"
                elif owner.mode == "not_object":
                    status, kind, body = 200, "application/json", b"[]"
                else:
                    status, kind = 200, "application/json"
                    body = json.dumps({"keys": owner.keys}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting (a timeout under test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self._running = True

    def stop(self) -> None:
        """Take the endpoint away: connections are refused from now on."""
        if self._running:
            self._running = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


class Clock:
    """Stands in for the ``time`` module inside authdb.resource: monotonic() moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def jwks() -> Iterator[JWKSServer]:
    server = JWKSServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import authdb.resource

    fake = Clock()
    monkeypatch.setattr(authdb.resource, "time", fake)
    return fake


def _verifier(server: JWKSServer, **options: Any) -> TokenVerifier:
    return TokenVerifier(server.url, issuer="authdb", audience="authdb", **options)


async def _refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


async def _settle(verifier: TokenVerifier) -> None:
    """Let a key-set fetch under way finish (one a stale key set started in the background):
    a token naming a kid no JWKS publishes waits for it. Call it only when no new fetch is
    due, or it starts one."""
    with pytest.raises(InvalidToken):
        await verifier.verify(Key.new().sign(kid="nobody-publishes-this-kid"))


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
async def test_verify_returns_the_typed_claims(jwks: JWKSServer, algorithm: str) -> None:
    """A token signed by a published key gives exactly the AccessTokenClaims, typed."""
    key = Key.new(algorithm)
    jwks.keys = [key.jwk]
    expected = _claims(sub="1234", sid=99)
    token = jwt.encode(expected, key.private, algorithm=algorithm, headers={"kid": key.kid})
    claims = await _verifier(jwks).verify(token)
    assert dict(claims) == expected
    assert set(claims) == set(CLAIM_TYPES)
    _assert_typed_claims(dict(claims))


async def test_unknown_kid_refetches_at_most_once_per_min_refetch(
    jwks: JWKSServer, clock: Clock
) -> None:
    """A new kid is looked up, but made-up kids cost one fetch per min_refetch_seconds."""
    first, second = Key.new(), Key.new()
    jwks.keys = [first.jwk]
    verifier = _verifier(jwks, min_refetch_seconds=30)
    await verifier.verify(first.sign())
    assert jwks.gets == 1
    await verifier.verify(first.sign())
    assert jwks.gets == 1, "a known kid is served from memory"

    # Made-up kids right after a fetch: refused without asking again.
    for n in range(5):
        await _refused(verifier, first.sign(kid=f"made-up-{n}"))
    assert jwks.gets == 1

    clock.advance(29)
    await _refused(verifier, first.sign(kid="made-up"))
    assert jwks.gets == 1
    clock.advance(1)
    await _refused(verifier, first.sign(kid="made-up"))
    assert jwks.gets == 2, "once min_refetch_seconds passed, an unknown kid is looked up"
    for n in range(5):
        await _refused(verifier, first.sign(kid=f"made-up-{n}"))
    assert jwks.gets == 2

    # A rotation: the new kid is fetched as soon as the limit allows, and then known.
    jwks.keys = [second.jwk, first.jwk]
    await _refused(verifier, second.sign())
    assert jwks.gets == 2
    clock.advance(30)
    assert (await verifier.verify(second.sign()))["sub"] == "42"
    assert jwks.gets == 3
    await verifier.verify(second.sign())
    await verifier.verify(first.sign())
    assert jwks.gets == 3


async def test_a_small_min_refetch_finds_a_new_key_at_once(jwks: JWKSServer) -> None:
    """With min_refetch_seconds=0 (and the real clock) every unknown kid is looked up."""
    first, second = Key.new("EdDSA"), Key.new("EdDSA")
    jwks.keys = [first.jwk]
    verifier = _verifier(jwks, min_refetch_seconds=0)
    await verifier.verify(first.sign())
    jwks.keys = [first.jwk, second.jwk]
    await verifier.verify(second.sign())
    assert jwks.gets == 2


async def test_max_age_refetch_drops_a_removed_key(jwks: JWKSServer, clock: Clock) -> None:
    """Known keys are refreshed after max_age_seconds, so a key taken out of the JWKS (a retired
    one) stops verifying once that refresh is done, while the others go on."""
    kept, removed = Key.new(), Key.new()
    jwks.keys = [kept.jwk, removed.jwk]
    verifier = _verifier(jwks, min_refetch_seconds=30, max_age_seconds=300)
    await verifier.verify(kept.sign())
    await verifier.verify(removed.sign())
    assert jwks.gets == 1

    jwks.keys = [kept.jwk]
    clock.advance(299)
    await verifier.verify(removed.sign())  # still within max_age: no fetch
    assert jwks.gets == 1
    clock.advance(1)
    # Stale: a refresh starts. The request that notices may still be served from memory while
    # it runs (a slow JWKS must not hold up known keys); once it is done, the key is gone.
    with contextlib.suppress(InvalidToken):
        await verifier.verify(removed.sign())
    await _settle(verifier)
    assert jwks.gets == 2
    await _refused(verifier, removed.sign())
    await verifier.verify(kept.sign())
    assert jwks.gets == 2


@pytest.mark.parametrize("failure", ["error", "not_json", "not_object", "stopped"])
async def test_a_failing_jwks_keeps_the_known_keys(
    jwks: JWKSServer, clock: Clock, failure: str
) -> None:
    """When the JWKS cannot be fetched (down, 503, not a key set) the known keys stay in use
    (an unknown kid is a plain InvalidToken then, not KeysUnavailable), and the next attempt
    comes 5 s after the failed one (sooner than min_refetch_seconds), not on every request."""
    key = Key.new()
    jwks.keys = [key.jwk]
    verifier = _verifier(jwks, min_refetch_seconds=30, max_age_seconds=60)
    await verifier.verify(key.sign())
    assert jwks.gets == 1

    if failure == "stopped":
        jwks.stop()
    else:
        jwks.mode = failure
    clock.advance(61)  # past max_age: the next request tries to refresh
    assert (await verifier.verify(key.sign()))["sub"] == "42"
    await _settle(verifier)
    if failure != "stopped":
        assert jwks.gets == 2, "the refresh was attempted"
    await verifier.verify(key.sign())
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(key.sign(kid="made-up"))
    assert not isinstance(refused.value, KeysUnavailable), "keys are known: a plain refusal"
    clock.advance(4.5)
    await verifier.verify(key.sign())
    await _refused(verifier, key.sign(kid="made-up"))
    if failure == "stopped":
        return
    assert jwks.gets == 2, "no retry within 5 s of the failed attempt"

    # Back up: the attempt 5 s after the failure succeeds and a new key becomes known.
    newer = Key.new()
    jwks.mode = "ok"
    jwks.keys = [newer.jwk, key.jwk]
    clock.advance(0.5)
    await verifier.verify(newer.sign())
    assert jwks.gets == 3
    # After a success, min_refetch_seconds applies again.
    await _refused(verifier, key.sign(kid="made-up"))
    clock.advance(29.5)
    await _refused(verifier, key.sign(kid="made-up"))
    assert jwks.gets == 3
    clock.advance(0.5)
    await _refused(verifier, key.sign(kid="made-up"))
    assert jwks.gets == 4


async def test_a_jwks_that_is_down_from_the_start_raises_keys_unavailable(
    jwks: JWKSServer, clock: Clock
) -> None:
    """No key known and no JWKS: ``verify`` raises KeysUnavailable (an InvalidToken), never
    another exception, and whatever the token's kid."""
    key = Key.new()
    jwks.stop()
    verifier = _verifier(jwks, timeout_seconds=2)
    for token in (key.sign(), key.sign(kid="made-up")):
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token)
    clock.advance(5)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(key.sign())
    # A token that is refused before any key is needed stays a plain InvalidToken.
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify("garbage")
    assert not isinstance(refused.value, KeysUnavailable)


def _resource_app(verifier: TokenVerifier) -> httpx.AsyncClient:
    """A FastAPI app with ``GET /me`` behind ``Depends(verifier)``, as an in-process client."""
    from fastapi import Depends, FastAPI

    app = FastAPI()

    @app.get("/me")
    async def me(claims: AccessTokenClaims = Depends(verifier)) -> dict[str, Any]:
        return dict(claims)

    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://resource.test")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "Token keys unavailable"}
    assert response.headers["retry-after"] == "5"
    assert "www-authenticate" not in response.headers, "not a reason to drop the token"


@pytest.mark.parametrize("failure", ["refused", "error"])
async def test_the_dependency_answers_503_until_the_jwks_first_answers(
    clock: Clock, failure: str
) -> None:
    """A service started before authdb: while no key set was ever fetched, a bearer token
    gets 503 ``Token keys unavailable`` with ``Retry-After: 5`` (not a 401 that would make the
    client throw a good token away), and the JWKS is tried again 5 s after each failure; once
    it answers, the same token gets 200, and a bad token 401."""
    key = Key.new("EdDSA")
    port = free_port()
    server: JWKSServer | None = None
    if failure == "error":
        server = JWKSServer(port)
        server.mode = "error"  # up, but 503 (authdb starting behind a proxy)
    url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    verifier = TokenVerifier(url, issuer="authdb", audience="authdb", min_refetch_seconds=30)
    try:
        async with _resource_app(verifier) as client:
            for _ in range(3):
                _assert_unavailable(await client.get("/me", headers=_bearer(key.sign())))
            missing = await client.get("/me")
            assert (missing.status_code, missing.json()) == (401, {"detail": "Not authenticated"})
            if server is not None:
                assert server.gets == 1, "one attempt; the next waits 5 s"

            # The JWKS answers now, but the verifier does not ask before 5 s have passed.
            if server is None:
                server = JWKSServer(port)
            server.mode = "ok"
            server.keys = [key.jwk]
            gets = server.gets
            clock.advance(4.5)
            _assert_unavailable(await client.get("/me", headers=_bearer(key.sign())))
            assert server.gets == gets
            clock.advance(0.5)
            ok = await client.get("/me", headers=_bearer(key.sign(sub="9")))
            assert ok.status_code == 200, ok.text
            assert ok.json()["sub"] == "9"
            assert server.gets == gets + 1
            # Known keys now: a bad token is the client's problem again.
            bad = await client.get("/me", headers=_bearer(key.sign(kid="made-up")))
            assert bad.status_code == 401
            assert bad.headers["www-authenticate"] == "Bearer"
            assert (await client.get("/me", headers=_bearer(key.sign()))).status_code == 200
            assert server.gets == gets + 1
    finally:
        if server is not None:
            server.stop()


@pytest.mark.parametrize(("min_refetch", "retry"), [(30, 5), (5, 5), (2, 2), (0, 0)])
async def test_after_a_failed_fetch_the_next_waits_the_lesser_of_5_s_and_min_refetch(
    jwks: JWKSServer, clock: Clock, min_refetch: float, retry: float
) -> None:
    """A failed fetch is retried after min(5, min_refetch_seconds) seconds; after a successful
    one the next fetch (for an unknown kid) waits min_refetch_seconds."""
    key, other = Key.new(), Key.new()
    jwks.mode = "error"
    verifier = _verifier(jwks, min_refetch_seconds=min_refetch)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(key.sign())
    assert jwks.gets == 1
    if retry:
        clock.advance(retry - 0.25)
        with pytest.raises(KeysUnavailable):
            await verifier.verify(key.sign())
        assert jwks.gets == 1
        clock.advance(0.25)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(key.sign())
    assert jwks.gets == 2, "retried once the delay passed"

    jwks.mode = "ok"
    jwks.keys = [key.jwk]
    clock.advance(retry)
    assert (await verifier.verify(key.sign()))["sub"] == "42"
    assert jwks.gets == 3
    jwks.keys = [key.jwk, other.jwk]
    if min_refetch:
        clock.advance(min_refetch - 0.25)
        await _refused(verifier, other.sign())
        assert jwks.gets == 3
        clock.advance(0.25)
    assert (await verifier.verify(other.sign()))["sub"] == "42"
    assert jwks.gets == 4


async def test_the_retry_delay_counts_from_the_end_of_the_failed_fetch(
    jwks: JWKSServer, clock: Clock
) -> None:
    """A failed fetch that took 3 s (a slow, failing authdb): the next attempt comes 5 s after
    it ended, not 5 s after it began."""
    key = Key.new()
    jwks.mode = "error"
    jwks.on_get = lambda: clock.advance(3)  # the fetch takes 3 s on the verifier's clock
    verifier = _verifier(jwks, min_refetch_seconds=30)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(key.sign())
    assert jwks.gets == 1
    jwks.on_get = None
    clock.advance(4.5)  # 7.5 s after it began, 4.5 s after it ended
    with pytest.raises(KeysUnavailable):
        await verifier.verify(key.sign())
    assert jwks.gets == 1
    clock.advance(0.5)
    jwks.mode = "ok"
    jwks.keys = [key.jwk]
    assert (await verifier.verify(key.sign()))["sub"] == "42"
    assert jwks.gets == 2


async def test_refusal_reasons_are_logged_at_debug(
    jwks: JWKSServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each 401 for a bad token logs its reason at DEBUG on ``authdb.resource`` (and nothing
    louder); an accepted token logs no refusal."""
    key = Key.new()
    jwks.keys = [key.jwk]
    verifier = _verifier(jwks)
    now = int(time.time())
    caplog.set_level(logging.DEBUG, logger="authdb.resource")
    async with _resource_app(verifier) as client:
        assert (await client.get("/me", headers=_bearer(key.sign()))).status_code == 200
        assert [r for r in caplog.records if "refused" in r.getMessage()] == []
        bad = {
            "expired": key.sign(iat=now - 600, exp=now - 30),
            "unknown kid 'made-up'": key.sign(kid="made-up"),
            "audience": key.sign(aud="billing"),
            "no kid": jwt.encode(_claims(), key.private, algorithm="ES256"),
        }
        for reason, token in bad.items():
            caplog.clear()
            response = await client.get("/me", headers=_bearer(token))
            assert response.status_code == 401, reason
            refusals = [
                record
                for record in caplog.records
                if record.name == "authdb.resource" and "refused" in record.getMessage()
            ]
            assert len(refusals) == 1, (reason, caplog.records)
            assert refusals[0].levelno == logging.DEBUG
            assert reason in refusals[0].getMessage().lower(), refusals[0].getMessage()
            louder = [
                r
                for r in caplog.records
                if r.name.startswith("authdb") and r.levelno > logging.DEBUG
            ]
            assert louder == [], louder


def test_importing_authdb_resource_loads_no_database_layer() -> None:
    """``import authdb.resource`` in a fresh interpreter loads neither SQLAlchemy nor the rest
    of authdb; ``authdb.Auth`` (looked up lazily) does, so the check can tell the two apart."""
    probe = (
        "import sys\n"
        "import authdb.resource\n"
        "assert authdb.resource.TokenVerifier\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'authdb')))\n"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUTHDB_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['authdb', 'authdb.resource']"
    control = "import sys\nimport authdb\nauthdb.Auth\nprint('sqlalchemy' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", control],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


async def test_hmac_and_disallowed_keys_in_the_jwks_are_ignored(jwks: JWKSServer) -> None:
    """Only keys of the allowed algorithms verify: an HS256 "oct" key, a key of another
    algorithm, an encryption key, or a key whose type does not match its alg are skipped."""
    allowed, eddsa, encryption = Key.new("ES256"), Key.new("EdDSA"), Key.new("ES256")
    no_alg = Key.new("ES256")
    secret = b"a shared secret that is long enough for HS256!!"
    oct_as_es256 = {"kty": "oct", "k": _b64(secret), "kid": "oct-es256", "alg": "ES256"}
    jwks.keys = [
        {"kty": "oct", "k": _b64(secret), "kid": "hmac", "alg": "HS256", "use": "sig"},
        oct_as_es256,
        eddsa.jwk,
        {**encryption.jwk, "use": "enc"},
        {**no_alg.jwk, "kid": "no-alg", "alg": None},
        allowed.jwk,
    ]
    verifier = _verifier(jwks, algorithms=["ES256"])
    claims = _claims()

    await _refused(verifier, jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "hmac"}))
    await _refused(verifier, _hs256_with(secret, {"kid": "oct-es256"}, claims))
    await _refused(verifier, eddsa.sign())
    await _refused(verifier, encryption.sign())
    await _refused(verifier, no_alg.sign(kid="no-alg"))  # a key must pin its algorithm
    # Algorithm confusion: HS256 "signed" with the ES256 public key the JWKS publishes.
    for secret_form in (json.dumps(allowed.jwk).encode(), allowed.jwk["x"].encode()):
        await _refused(verifier, _hs256_with(secret_form, {"kid": allowed.kid}, claims))
    # The one usable key still works, and the set was fetched once for all of the above.
    assert (await verifier.verify(allowed.sign()))["sub"] == "42"
    assert jwks.gets == 1


async def test_a_known_key_never_waits_for_a_hanging_jwks(jwks: JWKSServer, clock: Clock) -> None:
    """Past max_age the key set is refreshed in the background: while that fetch hangs, tokens
    of known keys are verified at once (the fetch is still unanswered when they return), and
    a token with an unknown kid gives up after timeout_seconds instead of hanging with it."""
    key = Key.new()
    jwks.keys = [key.jwk]
    verifier = _verifier(jwks, min_refetch_seconds=30, max_age_seconds=60, timeout_seconds=1)
    await verifier.verify(key.sign())
    assert jwks.gets == 1

    gate = threading.Event()
    jwks.gate = gate
    try:
        clock.advance(61)
        for n in range(5):
            claims = await asyncio.wait_for(verifier.verify(key.sign(sub=str(n))), DEADLINE_SECONDS)
            assert claims["sub"] == str(n)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while jwks.gets < 2:  # the background refresh has reached the JWKS ...
            assert time.monotonic() < deadline, "no background refresh"
            await asyncio.sleep(0.05)
        assert jwks.answered == 1  # ... and is still unanswered
        with pytest.raises(InvalidToken) as refused:
            await asyncio.wait_for(verifier.verify(key.sign(kid="made-up")), DEADLINE_SECONDS)
        assert not isinstance(refused.value, KeysUnavailable)
        assert jwks.answered == 1, "the unknown kid gave up before the JWKS answered"
        assert (await verifier.verify(key.sign()))["sub"] == "42"
        assert jwks.gets == 2, "one refresh at a time"
    finally:
        gate.set()


async def test_rsa_keys_under_2048_bits_are_ignored(jwks: JWKSServer) -> None:
    """A 1024-bit RSA key in the JWKS (RFC 7518 3.3 asks for 2048 at least) verifies nothing;
    a 2048-bit one beside it does."""
    weak_private = rsa.generate_private_key(65537, key_size=1024)  # noqa: S505 (on purpose)
    weak = Key("RS256", weak_private, signing.public_jwk(weak_private.public_key(), "RS256"))
    strong = Key.new("RS256")
    jwks.keys = [weak.jwk, strong.jwk]
    verifier = _verifier(jwks, algorithms=["RS256"])
    assert (await verifier.verify(strong.sign()))["sub"] == "42"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about signing with a short key
        short = weak.sign()
    await _refused(verifier, short)
    assert jwks.gets == 1


def test_hmac_algorithms_cannot_be_allowed() -> None:
    """A public key set can never vouch for an HMAC token: the constructor refuses HS256."""
    for algorithms in (["HS256"], ["ES256", "HS256"], ["none"]):
        with pytest.raises(ValueError, match="unsupported algorithms"):
            TokenVerifier(
                "http://127.0.0.1:9/jwks.json", issuer="a", audience="b", algorithms=algorithms
            )


async def test_unsigned_tokens_are_refused(jwks: JWKSServer) -> None:
    """``alg: none`` (any spelling) naming a published kid is refused."""
    key = Key.new()
    jwks.keys = [key.jwk]
    verifier = _verifier(jwks)
    await verifier.verify(key.sign())  # the key is known
    for alg in ("none", "None", "NONE"):
        await _refused(verifier, _unsigned({"alg": alg, "kid": key.kid, "typ": "JWT"}, _claims()))
    signed = key.sign()
    await _refused(verifier, signed.rsplit(".", 1)[0] + ".")  # the signature stripped


async def test_invalid_tokens_are_refused(jwks: JWKSServer) -> None:
    """Expired, not yet for us, unsigned by the key, malformed: all InvalidToken."""
    key, stranger = Key.new("ES256"), Key.new("ES256")
    jwks.keys = [key.jwk]
    verifier = _verifier(jwks)
    now = int(time.time())
    good = key.sign()
    assert (await verifier.verify(good))["sub"] == "42"
    hand_made = _signed_raw({"alg": "ES256", "kid": key.kid}, _claims(), key.private)
    assert (await verifier.verify(hand_made))["sub"] == "42", "the hand-made tokens are sound"
    bad = {
        "expired": key.sign(iat=now - 600, exp=now - 30),
        "wrong audience": key.sign(aud="billing"),
        "audience list without ours": key.sign(aud=["billing", "shipping"]),
        "wrong issuer": key.sign(iss="authdb-staging"),
        "no sid": key.sign(sid=None),
        "no exp": key.sign(exp=None),
        "no jti": key.sign(jti=None),
        "another key's signature": jwt.encode(
            _claims(), stranger.private, algorithm="ES256", headers={"kid": key.kid}
        ),
        "tampered payload": _tamper_payload(good, sub="1"),
        "tampered signature": _flip_signature(good),
        "kid not a string": _signed_raw({"alg": "ES256", "kid": 5}, _claims(), key.private),
        "kid a list": _signed_raw({"alg": "ES256", "kid": [key.kid]}, _claims(), key.private),
        "no kid": jwt.encode(_claims(), key.private, algorithm="ES256"),
        "garbage": "not a token",
        "empty": "",
        "header not JSON": f"{_b64(b'{nope')}.{_b64(b'{}')}.",
        "header a list": f"{_b64(b'[1]')}.{_b64(b'{}')}.",
        "too long": key.sign(padding="x" * 9000),
    }
    for name, token in bad.items():
        with pytest.raises(InvalidToken):
            await verifier.verify(token)
            pytest.fail(f"accepted: {name}")
    # leeway_seconds tolerates clocks that disagree a little.
    lenient = _verifier(jwks, leeway_seconds=60)
    assert (await lenient.verify(key.sign(iat=now - 600, exp=now - 30)))["sub"] == "42"


async def test_concurrent_requests_with_an_unknown_kid_fetch_once(
    jwks: JWKSServer, clock: Clock
) -> None:
    """Many requests at once with a kid the verifier has not seen (a cold start, a rotation):
    one fetch, and every one of them is answered with the claims."""
    first, second = Key.new(), Key.new()
    jwks.keys = [first.jwk]
    jwks.delay = 0.2  # the fetch is still under way while the other requests arrive
    verifier = _verifier(jwks, min_refetch_seconds=30)

    results = await asyncio.gather(
        *(verifier.verify(first.sign(sub=str(n))) for n in range(20)), return_exceptions=True
    )
    assert jwks.gets == 1
    assert [r if isinstance(r, BaseException) else r["sub"] for r in results] == [
        str(n) for n in range(20)
    ]

    jwks.keys = [second.jwk, first.jwk]
    clock.advance(30)
    results = await asyncio.gather(
        *(verifier.verify(second.sign(sub=str(n))) for n in range(20)), return_exceptions=True
    )
    assert jwks.gets == 2
    assert [r if isinstance(r, BaseException) else r["sub"] for r in results] == [
        str(n) for n in range(20)
    ]


async def test_concurrent_made_up_kids_cost_one_fetch(jwks: JWKSServer, clock: Clock) -> None:
    """A burst of tokens with made-up kids: one fetch, all refused."""
    key = Key.new()
    jwks.keys = [key.jwk]
    jwks.delay = 0.2
    verifier = _verifier(jwks, min_refetch_seconds=30)
    results = await asyncio.gather(
        *(verifier.verify(key.sign(kid=f"made-up-{n}")) for n in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(result, InvalidToken) for result in results), results
    assert jwks.gets == 1


async def test_the_verifier_is_a_fastapi_dependency(jwks: JWKSServer) -> None:
    """In an app: 200 with the claims, 401 Not authenticated / Could not validate credentials,
    both with WWW-Authenticate: Bearer; the OpenAPI schema declares the bearer scheme."""
    from fastapi import Depends, FastAPI

    key = Key.new("EdDSA")
    jwks.keys = [key.jwk]
    verifier = _verifier(jwks)
    app = FastAPI()

    @app.get("/me")
    async def me(claims: AccessTokenClaims = Depends(verifier)) -> dict[str, Any]:
        return dict(claims)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://resource.test") as client:
        ok = await client.get("/me", headers={"Authorization": f"Bearer {key.sign(sub='5')}"})
        assert ok.status_code == 200 and ok.json()["sub"] == "5"
        missing = await client.get("/me")
        assert missing.status_code == 401
        assert missing.json() == {"detail": "Not authenticated"}
        assert missing.headers["www-authenticate"] == "Bearer"
        bad = await client.get("/me", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert bad.json() == {"detail": "Could not validate credentials"}
        assert bad.headers["www-authenticate"] == "Bearer"
        schemes = (await client.get("/openapi.json")).json()["components"]["securitySchemes"]
        assert [scheme["scheme"] for scheme in schemes.values()] == ["bearer"]
