"""``authdb.resource.TokenVerifier``: another service checking authdb's access tokens.

Two halves:

- a real deployment: ``authdb serve`` (ES256 and EdDSA, SQLite and PostgreSQL) and, as its own
  process, ``tests/resource_app.py`` (a user's other FastAPI service) that knows nothing but
  authdb's JWKS URL; tokens come from ``/token`` over the socket, keys rotate through the CLI;
- ``TokenVerifier.verify`` in-process against a small real JWKS server on loopback (a thread
  counting its GETs), with keys made by ``authdb.signing`` and the verifier's clock moved by
  hand (``authdb.resource.time`` replaced), so refetch limits are counted, never timed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, get_type_hints

import httpx
import jwt
import pytest
from sqlalchemy import select

from authdb import signing
from authdb.db.engine import create_engine
from authdb.db.models import SigningKey
from authdb.resource import AccessTokenClaims, InvalidToken, TokenVerifier
from authdb.sealing import Sealer
from authdb.services import signing_keys
from tests.cli import run_cli
from tests.conftest import PASSWORD, free_port, pg_database
from tests.test_multiprocess import serving

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


async def _current_private_key(database_url: str) -> tuple[str, Any]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(SigningKey.kid, SigningKey.sealed_private_key)
                    .where(SigningKey.sealed_private_key.is_not(None))
                    .order_by(SigningKey.generation.desc())
                    .limit(1)
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


@pytest.fixture(
    scope="module",
    params=[
        ("sqlite", "ES256"),
        ("sqlite", "EdDSA"),
        ("postgresql", "ES256"),
        ("postgresql", "EdDSA"),
    ],
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
        migrated = run_cli(["migrate"], env=env)
        assert migrated.returncode == 0, migrated.stderr
        created = run_cli(
            ["createuser", "--username", "alice", "--email", "alice@x.example", "--password-stdin"],
            env=env,
            stdin=PASSWORD + "\n",
        )
        assert created.returncode == 0, created.stderr
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
    """After `authdb keys rotate` the new key's tokens open the other service (a refetch on the
    unknown kid) and old tokens keep working; `keys retire` ends the old ones everywhere."""
    old_token = deployment.token()
    old_kid = _kid(old_token)
    # This service fetches the key set on its first request and then every second (max age).
    with resource_service(
        deployment.authdb, deployment.log_dir, min_refetch_seconds="0", max_age_seconds="1"
    ) as short_lived:
        assert _get(deployment.resource, "/claims", old_token).status_code == 200
        assert _get(short_lived, "/claims", old_token).status_code == 200

        rotated = run_cli(["keys", "rotate"], env=deployment.env)
        assert rotated.returncode == 0, rotated.stderr
        new_kid = rotated.stdout.strip().rsplit(" ", 1)[-1]
        assert new_kid != old_kid

        new_tokens: list[str] = []

        def issues_new_key() -> bool:
            new_tokens.append(deployment.token())
            return _kid(new_tokens[-1]) == new_kid

        _poll(issues_new_key, f"authdb serve signs with {new_kid}")
        new_token = new_tokens[-1]

        # The resource service knew only the old key: the unknown kid makes it refetch.
        response = _get(deployment.resource, "/claims", new_token)
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == str(deployment.user_id)
        assert _get(short_lived, "/claims", new_token).status_code == 200
        # Tokens of the replaced key keep working until they expire.
        assert _get(deployment.resource, "/claims", old_token).status_code == 200
        assert _get(deployment.authdb, "/users/me/", old_token).status_code == 200
        jwks = httpx.get(f"{deployment.authdb}/.well-known/jwks.json").json()["keys"]
        assert {old_kid, new_kid} <= {key["kid"] for key in jwks}

        retired = run_cli(["keys", "retire", old_kid], env=deployment.env)
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
    """A JWKS endpoint on 127.0.0.1 in a thread; counts the GETs it answers.

    ``mode``: ``ok`` serves ``keys``; ``error`` answers 503; ``not_json`` a 200 HTML page;
    ``not_object`` a JSON array. ``delay`` holds each answer that many seconds.
    """

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.mode = "ok"
        self.delay = 0.0
        self.gets = 0
        self._count_lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._count_lock:
                    owner.gets += 1
                if owner.delay:
                    time.sleep(owner.delay)
                if owner.mode == "error":
                    status, kind, body = 503, "text/plain", b"unavailable"
                elif owner.mode == "not_json":
                    status, kind, body = 200, "text/html", b"<html>sign in to the proxy</html>"
                elif owner.mode == "not_object":
                    status, kind, body = 200, "application/json", b"[]"
                else:
                    status, kind = 200, "application/json"
                    body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
    one) stops verifying then, while the others go on."""
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
    await _refused(verifier, removed.sign())
    assert jwks.gets == 2
    await verifier.verify(kept.sign())
    assert jwks.gets == 2


@pytest.mark.parametrize("failure", ["error", "not_json", "not_object", "stopped"])
async def test_a_failing_jwks_keeps_the_known_keys(
    jwks: JWKSServer, clock: Clock, failure: str
) -> None:
    """When the JWKS cannot be fetched (down, 503, not a key set) the known keys stay in use,
    and the failed attempt counts for the refetch limit."""
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
    if failure != "stopped":
        assert jwks.gets == 2, "the refresh was attempted"
    await verifier.verify(key.sign())
    await _refused(verifier, key.sign(kid="made-up"))
    if failure != "stopped":
        assert jwks.gets == 2, "a failed attempt counts: no retry within min_refetch_seconds"

    if failure != "stopped":
        # Back up: the next attempt after the limit succeeds and a new key becomes known.
        newer = Key.new()
        jwks.mode = "ok"
        jwks.keys = [newer.jwk, key.jwk]
        clock.advance(30)
        await verifier.verify(newer.sign())
        assert jwks.gets == 3


async def test_a_jwks_that_is_down_from_the_start_refuses_without_error(
    jwks: JWKSServer, clock: Clock
) -> None:
    """No key known and no JWKS: tokens are refused (InvalidToken), never an exception."""
    key = Key.new()
    jwks.stop()
    verifier = _verifier(jwks, timeout_seconds=2)
    await _refused(verifier, key.sign())
    await _refused(verifier, key.sign())


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
