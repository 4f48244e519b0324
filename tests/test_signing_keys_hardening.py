"""Signing keys when a deployment's processes disagree, race, or are given odd input.

Found by attacking issue 13 from outside: a process that cannot open the current key (another
AUTHDB_SECRET_KEY) must still drop retired keys, concurrent key changes must never leave two
current keys, ``retire`` must refuse another algorithm as ``rotate`` does, and a kid that is not
one names no key (never a database error).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from authdb import Auth, Settings, signing
from authdb.errors import NotFound
from authdb.resource import KeysUnavailable, TokenVerifier
from authdb.services import signing_keys
from authdb.services.core import CLI_CLIENT
from authdb.services.signing_keys import AlgorithmMismatch, RotationConflict
from tests.cli import run_cli
from tests.conftest import PASSWORD, Harness
from tests.signing_helpers import (
    JWKS,
    OTHER_SECRET,
    compact,
    header,
    key_states,
    me_status,
)

MakeHarness = Callable[..., Awaitable[Harness]]


async def _token(harness: Harness) -> str:
    return str((await harness.login())["access_token"])


async def test_a_process_that_cannot_open_the_current_key_still_drops_retired_keys(
    make_harness: MakeHarness,
) -> None:
    """A (first secret) and B (another secret, so B makes its own current key) share one
    database. A cannot sign with B's key: it keeps signing with its own while that stays valid,
    and once that key is retired A refuses its tokens and answers 503 to sign-ins instead of
    running on a stale key set."""
    a = await make_harness(jwt_algorithm="ES256")
    await a.create_user()
    old_token = await _token(a)
    old_kid = header(old_token)["kid"]
    b = await make_harness(jwt_algorithm="ES256", secret_key=OTHER_SECRET)
    assert (await key_states(b))[old_kid] == "retiring"

    assert a.auth.core.keyring is not None
    await a.auth.core.keyring.reload()  # logs that the current key does not open
    assert header(await _token(a))["kid"] == old_kid  # still signs with its valid key
    assert await me_status(a, old_token) == 200

    await signing_keys.retire(b.auth.core, old_kid, CLI_CLIENT)
    await a.auth.core.keyring.reload()
    assert await me_status(a, old_token) == 401
    refused = await a.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"]
    assert old_kid not in [k["kid"] for k in (await a.client.get(JWKS)).json()["keys"]]


async def test_retiring_the_current_key_with_another_algorithm_is_refused(
    make_harness: MakeHarness, make_settings: Callable[..., Settings]
) -> None:
    """As ``rotate``: from a shell whose AUTHDB_JWT_ALGORITHM is not the current key's, the
    successor would switch the running deployment's algorithm behind its back."""
    harness = await make_harness(jwt_algorithm="ES256")
    current = next(kid for kid, state in (await key_states(harness)).items() if state == "current")
    shell = Auth(make_settings(jwt_algorithm="RS256"))  # as the CLI starts: no keys made
    await shell.startup(issue_tokens=False)
    try:
        with pytest.raises(AlgorithmMismatch):
            await signing_keys.retire(shell.core, current, CLI_CLIENT)
    finally:
        await shell.shutdown()
    assert (await key_states(harness))[current] == "current"


@pytest.mark.parametrize(
    "kid", ["\udcff", "x" * 65, "a/b", "", "kid with spaces", "é", "' OR 1=1 --"]
)
async def test_a_kid_that_cannot_be_ours_names_no_key(harness: Harness, kid: str) -> None:
    with pytest.raises(NotFound) as refused:
        await signing_keys.retire(harness.auth.core, kid, CLI_CLIENT)
    assert "no signing key" in refused.value.detail
    assert len(refused.value.detail) < 100


async def test_concurrent_rotations_never_leave_two_current_or_next_keys(
    make_harness: MakeHarness,
) -> None:
    """Rotations from three processes at once, repeatedly: each either wins or is told of the
    conflict, and the table always has exactly one current and one next key."""
    first = await make_harness(jwt_algorithm="ES256")
    apps = [first, *[await make_harness(jwt_algorithm="ES256") for _ in range(2)]]
    for _ in range(4):
        results = await asyncio.gather(
            *(signing_keys.rotate(app.auth.core, CLI_CLIENT) for app in apps),
            return_exceptions=True,
        )
        assert all(isinstance(r, str | RotationConflict) for r in results), results
        assert any(isinstance(r, str) for r in results), results
        states = list((await key_states(first)).values())
        assert states.count("current") == 1, states
        assert states.count("next") == 1, states


class _CatchUpClock:
    """Stands in for ``time`` and ``asyncio`` inside authdb.services.signing_keys: monotonic()
    moves only when the key ring pauses, and each pause is recorded instead of slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def __getattr__(self, name: str) -> Any:  # the rest of asyncio (Lock, CancelledError...)
        return getattr(asyncio, name)


async def test_unknown_kids_make_the_keys_be_reread_at_most_once_a_second(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token naming an unknown kid makes the app re-read the keys, but reads are at least
    ``_CATCH_UP_SECONDS`` apart (a stream of made-up kids cannot make every request query the
    database) and requests that come together share one read. Time is the key ring's own
    clock, turned by hand."""
    app = await make_harness(jwt_algorithm="ES256")
    await app.create_user()
    token = await _token(app)
    keyring = app.auth.core.keyring
    assert keyring is not None
    clock = _CatchUpClock()
    monkeypatch.setattr(signing_keys, "time", clock)
    monkeypatch.setattr(signing_keys, "asyncio", clock)
    reads: list[float] = []
    load = signing_keys._load

    async def counted(*args: Any) -> Any:
        reads.append(clock.now)
        return await load(*args)

    monkeypatch.setattr(signing_keys, "_load", counted)
    await keyring.reload()  # the periodic re-read, at 1000 s
    made_up = [compact({"alg": "ES256", "kid": f"{n}" * 43}, {"sub": "1"}, None) for n in range(9)]

    assert await me_status(app, token) == 200
    assert reads == [1000.0], "a known kid reads nothing"
    for forged in made_up[:3]:
        clock.now += 0.25  # each comes a quarter of a second after the read before it
        assert await me_status(app, forged) == 401
    # Each waited for the rest of the second since the read before it, then read once.
    assert clock.pauses == [0.75, 0.75, 0.75]
    assert reads == [1000.0, 1001.0, 1002.0, 1003.0]

    clock.now += 30  # long after the last read: no pause
    assert await me_status(app, made_up[3]) == 401
    assert reads[-1] == 1033.0

    clock.now += 30  # five requests at once: the first reads, the others use that read
    statuses = await asyncio.gather(*(me_status(app, forged) for forged in made_up[4:]))
    assert statuses == [401] * 5
    assert reads == [1000.0, 1001.0, 1002.0, 1003.0, 1033.0, 1063.0]
    assert clock.pauses == [0.75, 0.75, 0.75]
    assert await me_status(app, token) == 200


def test_a_kid_beginning_with_a_dash_is_a_kid_not_an_option(tmp_path: Path) -> None:
    """Thumbprints are base64url, so one in 64 begins with "-": the CLI must not take it for an
    option (a usage error) but look it up."""
    env = {
        "AUTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}",
        "AUTHDB_SECRET_KEY": OTHER_SECRET,
        "AUTHDB_JWT_ALGORITHM": "ES256",
    }
    assert run_cli(["migrate"], env=env).returncode == 0
    result = run_cli(["keys", "retire", "-x7D4_xswlt34k1NSa2X0uQT2"], env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no signing key '-x7D4_xswlt34k1NSa2X0uQT2'"


# --- TokenVerifier against a hostile or stuck JWKS ------------------------------------------


class _JWKSServer:
    """A JWKS on loopback whose answer the test sets; ``hold`` makes requests wait until
    ``release`` (a stuck authdb)."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.gate = threading.Event()
        self.gate.set()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                outer.gate.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[_JWKSServer]:
    server = _JWKSServer()
    yield server
    server.close()


def _signed(key: Any, kid: str) -> str:
    now = int(time.time())
    claims = {"sub": "1", "sid": 1, "iat": now, "exp": now + 600, "jti": "j", "iss": "authdb"}
    claims["aud"] = "authdb"
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


async def test_a_known_key_never_waits_for_a_stuck_jwks(jwks_server: _JWKSServer) -> None:
    key = signing.generate("ES256")
    jwk = signing.public_jwk(key.public_key(), "ES256")
    jwks_server.body = json.dumps({"keys": [jwk]}).encode()
    verifier = TokenVerifier(
        jwks_server.url,
        issuer="authdb",
        audience="authdb",
        max_age_seconds=0,
        min_refetch_seconds=0,
    )
    token = _signed(key, jwk["kid"])
    assert (await verifier.verify(token))["sub"] == "1"
    jwks_server.gate.clear()  # from now on the JWKS hangs
    # The set is stale: a refresh starts in the background, and the known key answers at once
    # (the guard only stops a hang: the server holds its answer until released).
    claims = await asyncio.wait_for(verifier.verify(token), 30)
    assert claims["sub"] == "1"
    for _ in range(600):  # the refresh did start, and is held by the server
        if jwks_server.requests == 2:
            break
        await asyncio.sleep(0.05)
    assert jwks_server.requests == 2
    assert not jwks_server.gate.is_set()
    # Meanwhile the known key keeps answering, the held fetch shared rather than repeated.
    assert (await asyncio.wait_for(verifier.verify(token), 30))["sub"] == "1"
    assert jwks_server.requests == 2
    jwks_server.gate.set()


async def test_a_deeply_nested_jwks_is_a_failed_fetch_not_a_crash(
    jwks_server: _JWKSServer,
) -> None:
    jwks_server.body = b"[" * 100_000 + b"]" * 100_000
    verifier = TokenVerifier(jwks_server.url, issuer="authdb", audience="authdb")
    key = signing.generate("ES256")
    with pytest.raises(KeysUnavailable):
        await verifier.verify(_signed(key, "k"))
