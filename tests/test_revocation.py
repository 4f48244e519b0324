"""``POST /revoke`` (RFC 7009): a refresh or access token ends the session that owns it.

On SQLite and PostgreSQL, under HS256 and ES256: what a revocation ends and what it leaves
alone, that every token (unknown, garbage, expired, already revoked, 100 KB) answers 200 and
changes nothing, the audit row, a race of two revocations, and Authlib's clients (in-process,
and the synchronous one against a real ``authdb serve``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuth2Client, OAuthError
from sqlalchemy import select

from authdb.app import create_app
from authdb.db.models import AuthSession
from authdb.services import signing_keys
from authdb.services.audit import list_events
from authdb.services.core import CLI_CLIENT
from authdb.tokens import hash_opaque_token
from tests.cli import run_cli
from tests.conftest import PASSWORD, Harness, pg_database
from tests.mfa_helpers import freeze
from tests.test_serve import serving

MakeHarness = Callable[..., Awaitable[Harness]]
TOKEN_URL = "http://testserver/token"
REVOKE_URL = "http://testserver/revoke"
HINTS = [None, "access_token", "refresh_token", "bogus_hint", ""]


@pytest.fixture(params=["HS256", "ES256"])
def algorithm(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def rh(make_harness: MakeHarness, algorithm: str) -> Harness:
    """A started app (HS256 or ES256) with users alice and bob."""
    harness = await make_harness(jwt_algorithm=algorithm)
    await harness.create_user("alice")
    await harness.create_user("bob")
    return harness


async def _revoke(harness: Harness, token: str, hint: str | None = None, **headers: str) -> Any:
    form = {"token": token}
    if hint is not None:
        form["token_type_hint"] = hint
    response = await harness.client.post("/revoke", data=form, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response


async def _me(harness: Harness, tokens: dict[str, Any]) -> int:
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    return (await harness.client.get("/users/me", headers=bearer)).status_code


async def _refresh(harness: Harness, refresh_token: str) -> httpx.Response:
    return await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


async def _alive(harness: Harness, tokens: dict[str, Any]) -> dict[str, Any]:
    """Assert the session of ``tokens`` still works (access and refresh); returns the new pair."""
    assert await _me(harness, tokens) == 200
    refreshed = await _refresh(harness, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    pair = dict(refreshed.json())
    assert await _me(harness, pair) == 200
    return pair


async def _dead(harness: Harness, tokens: dict[str, Any]) -> None:
    """Assert the session of ``tokens`` is over: access token 401, refresh token 401."""
    assert await _me(harness, tokens) == 401
    refreshed = await _refresh(harness, tokens["refresh_token"])
    assert refreshed.status_code == 401
    assert refreshed.json()["error"] == "invalid_grant"


def _sid(tokens: dict[str, Any]) -> int:
    return int(jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"])


async def _revocations(harness: Harness) -> list[Any]:
    return [e for e in await list_events(harness.auth.core) if e.event == "token_revoked"]


async def _revoked_at(harness: Harness) -> dict[int, Any]:
    async with harness.auth.core.sessionmaker() as db:
        rows = (await db.execute(select(AuthSession.id, AuthSession.revoked_at))).all()
    return {session_id: revoked_at for session_id, revoked_at in rows}


# --- what a revocation ends ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["refresh_token", "access_token"])
async def test_revoking_either_token_ends_its_session_whatever_the_hint(
    rh: Harness, kind: str
) -> None:
    """Refresh or access token, with the right, wrong, unknown or no hint: the owning session
    ends (its access token 401 on /users/me, its refresh token 401); the user's other session
    and another user's session live on."""
    for done, hint in enumerate(HINTS, start=1):
        target = await rh.login("alice")
        other = await rh.login("alice")
        bobs = await rh.login("bob")
        await _revoke(rh, target[kind], hint)
        await _dead(rh, target)
        await _alive(rh, other)
        await _alive(rh, bobs)
        events = await _revocations(rh)
        assert len(events) == done, hint
        assert events[-1].detail == {"session_id": _sid(target)}, hint


async def test_revocation_is_audited_with_user_session_and_client(rh: Harness) -> None:
    """One ``token_revoked`` row naming the user, the session and the caller's user agent."""
    tokens = await rh.login("alice")
    me = await rh.client.get(
        "/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    alice_id = me.json()["id"]
    await _revoke(rh, tokens["refresh_token"], **{"User-Agent": "revoker/1.0"})
    (event,) = await _revocations(rh)
    assert event.user_id == alice_id
    assert event.detail == {"session_id": _sid(tokens)}
    assert event.user_agent == "revoker/1.0"
    assert tokens["refresh_token"] not in json.dumps(event.detail)


async def test_revoke_answers_200_with_an_empty_body(rh: Harness) -> None:
    """RFC 7009 2.2: the content of the response body is ignored; ours is empty."""
    tokens = await rh.login("alice")
    response = await _revoke(rh, tokens["refresh_token"])
    assert response.content == b""


async def test_a_rotated_access_token_still_ends_the_session(rh: Harness) -> None:
    """An access token from before a refresh names the same session: revoking it ends the
    session, so the newest pair stops working too."""
    first = await rh.login("alice")
    second = (await _refresh(rh, first["refresh_token"])).json()
    await _revoke(rh, first["access_token"], "access_token")
    await _dead(rh, second)


async def test_users_token_cannot_end_another_users_session(rh: Harness) -> None:
    """Alice's access token ends only Alice's session; an access token whose ``sub`` is Alice
    but whose ``sid`` is Bob's session (minted with the app's own key: a sid/sub binding check,
    not a forgery) ends nothing."""
    alice = await rh.login("alice")
    bob = await rh.login("bob")
    me = await rh.client.get(
        "/users/me", headers={"Authorization": f"Bearer {alice['access_token']}"}
    )
    alice_id = int(me.json()["id"])
    crossed = rh.auth.core.jwt.encode(
        user_id=alice_id, session_id=_sid(bob), now=rh.auth.core.clock()
    )
    for hint in (None, "access_token", "refresh_token"):
        await _revoke(rh, crossed, hint)
    await _alive(rh, bob)
    assert await _revocations(rh) == []
    await _revoke(rh, alice["access_token"])
    await _dead(rh, alice)
    await _alive(rh, bob)


async def test_a_session_id_or_a_stored_hash_is_not_a_token(rh: Harness) -> None:
    """Values that name a session without being its token (its id, the refresh token's stored
    hash, as a database reader would see it) end nothing."""
    tokens = await rh.login("alice")
    for value in (str(_sid(tokens)), hash_opaque_token(tokens["refresh_token"])):
        await _revoke(rh, value)
    await _alive(rh, tokens)
    assert await _revocations(rh) == []


# --- tokens that change nothing -----------------------------------------------------------------


def _fake_jwt(algorithm: str) -> str:
    header = base64.urlsafe_b64encode(json.dumps({"alg": algorithm, "kid": "x"}).encode())
    body = base64.urlsafe_b64encode(json.dumps({"sub": "1", "sid": 1}).encode())
    return f"{header.decode().rstrip('=')}.{body.decode().rstrip('=')}.c2lnbmF0dXJl"


GARBAGE = {
    "word": "garbage",
    "dots": "a.b.c",
    "refresh_shaped": "A" * 43,
    "unsigned_jwt": _fake_jwt("none"),
    "wrong_signature_jwt": _fake_jwt("HS256"),
    "unicode": "jeton-\u00e9\u4e2d\U0001f511",
    "whitespace": "   ",
    "sql": "' OR 1=1 --",
    "long_8k": "x" * (8 * 1024 + 1),
    "huge_100k": "y" * (100 * 1024),
}


async def test_unknown_and_garbage_tokens_answer_200_and_change_nothing(rh: Harness) -> None:
    """Any value that is not a live token, with any hint: 200, no session ends, no audit row."""
    tokens = await rh.login("alice")
    before = await _revoked_at(rh)
    for value in GARBAGE.values():
        for hint in (None, "access_token", "refresh_token"):
            await _revoke(rh, value, hint)
    assert await _revoked_at(rh) == before
    assert await _revocations(rh) == []
    await _alive(rh, tokens)


async def test_a_live_token_padded_past_the_limit_is_not_looked_up(rh: Harness) -> None:
    """A real refresh token with 100 KB appended is another (unknown) token: nothing ends."""
    tokens = await rh.login("alice")
    await _revoke(rh, tokens["refresh_token"] + "z" * (100 * 1024), "refresh_token")
    await _revoke(rh, tokens["access_token"] + "z" * (100 * 1024), "access_token")
    assert await _revocations(rh) == []
    await _alive(rh, tokens)


async def test_already_revoked_token_answers_200_and_writes_no_second_row(rh: Harness) -> None:
    tokens = await rh.login("alice")
    await _revoke(rh, tokens["refresh_token"])
    first = await _revoked_at(rh)
    for kind in ("refresh_token", "access_token", "refresh_token"):
        await _revoke(rh, tokens[kind])
    assert await _revoked_at(rh) == first  # revoked_at not moved
    assert len(await _revocations(rh)) == 1
    await _dead(rh, tokens)


async def test_a_logged_out_sessions_tokens_change_nothing(rh: Harness) -> None:
    """After /logout, revoking the session's tokens writes no ``token_revoked`` row."""
    tokens = await rh.login("alice")
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await rh.client.post("/logout", headers=bearer)).status_code == 204
    await _revoke(rh, tokens["refresh_token"])
    await _revoke(rh, tokens["access_token"])
    assert await _revocations(rh) == []


async def test_an_expired_access_token_changes_nothing(make_harness: MakeHarness) -> None:
    """An access token past its ``exp`` is not a token any more: its session lives on."""
    harness = await make_harness(access_token_expire_minutes=1)
    await harness.create_user("alice")
    clock = freeze(harness)  # 15 minutes ago: the token below expired 14 minutes ago
    tokens = await harness.login("alice")
    assert await _me(harness, tokens) == 401  # expired indeed
    await _revoke(harness, tokens["access_token"], "access_token")
    await _revoke(harness, tokens["access_token"])
    assert await _revocations(harness) == []
    clock.advance(seconds=1)
    refreshed = await _refresh(harness, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text


async def test_an_access_token_of_a_retired_key_changes_nothing(
    make_harness: MakeHarness,
) -> None:
    """An access token whose signing key was retired is no token any more: revoking it
    answers 200 and leaves its session alone (its refresh token still works, and the new
    access token, signed by the key that took over, too). Revoking the refresh token is how
    that client is signed out."""
    harness = await make_harness(jwt_algorithm="ES256")
    await harness.create_user("alice")
    tokens = await harness.login("alice")
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    successor = await signing_keys.retire(harness.auth.core, kid, CLI_CLIENT)
    assert successor is not None and successor != kid
    assert await _me(harness, tokens) == 401  # the key is gone indeed
    await _revoke(harness, tokens["access_token"], "access_token")
    await _revoke(harness, tokens["access_token"])
    assert await _revocations(harness) == []
    refreshed = await _refresh(harness, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    pair = dict(refreshed.json())
    assert jwt.get_unverified_header(pair["access_token"])["kid"] == successor
    assert await _me(harness, pair) == 200
    await _revoke(harness, pair["refresh_token"], "refresh_token")
    await _dead(harness, pair)
    assert len(await _revocations(harness)) == 1


async def test_an_expired_sessions_refresh_token_changes_nothing(rh: Harness) -> None:
    """A refresh token whose session has expired is dead already: revoking it answers 200,
    leaves the row as it was and writes no ``token_revoked`` row (RFC 7009 2.2)."""
    clock = freeze(rh)
    tokens = await rh.login("alice")
    clock.advance(days=rh.auth.settings.refresh_token_expire_days, seconds=1)
    assert (await _refresh(rh, tokens["refresh_token"])).status_code == 401  # expired indeed
    before = await _revoked_at(rh)
    await _revoke(rh, tokens["refresh_token"], "refresh_token")
    assert await _revoked_at(rh) == before
    assert await _revocations(rh) == []


# --- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [{}, {"token_type_hint": "refresh_token"}, {"token": ""}],
    ids=["empty", "hint", "blank"],
)
async def test_missing_token_is_invalid_request(rh: Harness, form: dict[str, str]) -> None:
    """No ``token``: 422 with RFC 6749 ``error: invalid_request`` beside FastAPI's detail."""
    tokens = await rh.login("alice")
    response = await rh.client.post("/revoke", data=form)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert isinstance(body["detail"], list)
    assert any(item["loc"][-1] == "token" for item in body["detail"])
    assert "token" in body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    await _alive(rh, tokens)


async def test_a_token_outside_the_form_body_is_refused(rh: Harness) -> None:
    """RFC 7009 2.1 asks for a form body: a live token in JSON or in the query string (where
    logs keep it) is refused with invalid_request and ends nothing."""
    tokens = await rh.login("alice")
    as_json = await rh.client.post("/revoke", json={"token": tokens["refresh_token"]})
    in_query = await rh.client.post("/revoke", params={"token": tokens["refresh_token"]})
    for response in (as_json, in_query):
        assert response.status_code == 422
        assert response.json()["error"] == "invalid_request"
    await _alive(rh, tokens)
    assert await _revocations(rh) == []


async def test_get_is_not_allowed(rh: Harness) -> None:
    tokens = await rh.login("alice")
    response = await rh.client.get("/revoke", params={"token": tokens["refresh_token"]})
    assert response.status_code == 405
    await _alive(rh, tokens)


# --- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["refresh_token", "access_token"])
async def test_simultaneous_revocations_answer_200_and_audit_once(rh: Harness, kind: str) -> None:
    """Two (and then eight) revocations of one token at once, a few times over: every one 200,
    the session ended, exactly one ``token_revoked`` row per session."""
    rounds = (2, 2, 8, 8)
    for count in rounds:
        tokens = await rh.login("alice")
        form = {"token": tokens[kind]}
        responses = await asyncio.gather(
            *(rh.client.post("/revoke", data=form) for _ in range(count))
        )
        assert [r.status_code for r in responses] == [200] * count
        await _dead(rh, tokens)
    rows = await _revocations(rh)
    sessions = [event.detail["session_id"] for event in rows]
    assert len(sessions) == len(set(sessions)) == len(rounds), sessions


# --- Authlib ---------------------------------------------------------------------------------


@pytest.fixture
async def authlib_client(rh: Harness) -> AsyncIterator[AsyncOAuth2Client]:
    """Authlib's async client, a public client, talking to the app in-process."""
    async with AsyncOAuth2Client(
        client_id="my-app",
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
        transport=httpx.ASGITransport(app=create_app(auth=rh.auth)),
        base_url="http://testserver",
    ) as client:
        yield client


async def test_authlib_revokes_a_refresh_token(authlib_client: AsyncOAuth2Client) -> None:
    token = await authlib_client.fetch_token(
        TOKEN_URL, grant_type="password", username="alice", password=PASSWORD
    )
    assert (await authlib_client.get("/users/me")).status_code == 200
    response = await authlib_client.revoke_token(
        REVOKE_URL, token=token["refresh_token"], token_type_hint="refresh_token"
    )
    assert response.status_code == 200
    assert (await authlib_client.get("/users/me")).status_code == 401
    with pytest.raises(OAuthError) as failed:
        await authlib_client.refresh_token(TOKEN_URL, refresh_token=token["refresh_token"])
    assert failed.value.error == "invalid_grant"


async def test_authlib_revokes_an_access_token_found_through_discovery(
    authlib_client: AsyncOAuth2Client, rh: Harness
) -> None:
    """The revocation endpoint as a client finds it: from the RFC 8414 metadata. Revoking the
    access token ends that session only."""
    metadata = (await rh.client.get("/.well-known/oauth-authorization-server")).json()
    # The harness' PUBLIC_URL is not the test server's: keep only the advertised path.
    public_url = rh.auth.settings.public_url
    revocation = metadata["revocation_endpoint"].removeprefix(public_url)
    token_url = metadata["token_endpoint"].removeprefix(public_url)
    assert (token_url, revocation) == ("/token", "/revoke")
    token = await authlib_client.fetch_token(
        f"http://testserver{token_url}", grant_type="password", username="alice", password=PASSWORD
    )
    other = await rh.login("alice")
    response = await authlib_client.revoke_token(
        f"http://testserver{revocation}", token=token["access_token"]
    )
    assert response.status_code == 200
    assert (await authlib_client.get("/users/me")).status_code == 401
    await _alive(rh, other)


async def test_authlib_revoke_of_an_unknown_token_is_fine(
    authlib_client: AsyncOAuth2Client, rh: Harness
) -> None:
    response = await authlib_client.revoke_token(REVOKE_URL, token="never-issued")
    assert response.status_code == 200
    assert await _revocations(rh) == []


# --- a real server: Authlib's synchronous client over HTTP -----------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One ``authdb serve`` (ES256) per database for the module, with user alice."""
    directory = tmp_path_factory.mktemp(f"revoke-{request.param}")
    env = {
        "AUTHDB_SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256-0123456789",
        "AUTHDB_JWT_ALGORITHM": "ES256",
        "AUTHDB_RATE_LIMIT_LOGIN_FAILURES": "1000/minute",
    }
    database = pg_database()
    if request.param == "sqlite":
        env["AUTHDB_DATABASE_URL"] = f"sqlite+aiosqlite:///{directory / 'authdb.db'}"
    else:
        env["AUTHDB_DATABASE_URL"] = asyncio.run(database.__aenter__())
    # Only serve and migrate create a database: createuser needs it made first.
    migrated = run_cli(["migrate"], env=env, cwd=directory)
    assert migrated.returncode == 0, migrated.stderr
    try:
        created = run_cli(
            ["createuser", "--username", "alice", "--email", "alice@example.com",
             "--password-stdin"],
            env=env,
            stdin=PASSWORD + "\n",
            cwd=directory,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        with serving(directory, env) as base:
            yield base
    finally:
        if request.param == "postgresql":
            asyncio.run(database.__aexit__(None, None, None))


def test_real_server_metadata_ignores_a_hostile_host_and_authlib_revokes(server: str) -> None:
    """Over a real socket: the metadata names the served address whatever the Host header,
    and Authlib's synchronous OAuth2Client revokes through the advertised endpoint."""
    metadata = httpx.get(
        f"{server}/.well-known/oauth-authorization-server",
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    ).json()
    assert metadata["revocation_endpoint"] == f"{server}/revoke"
    assert metadata["token_endpoint"] == f"{server}/token"
    assert metadata["jwks_uri"] == f"{server}/.well-known/jwks.json"
    with OAuth2Client(client_id="my-app", token_endpoint_auth_method="none") as client:
        token = client.fetch_token(
            metadata["token_endpoint"],
            grant_type="password",
            username="alice",
            password=PASSWORD,
        )
        assert client.get(f"{server}/users/me").status_code == 200
        survivor = httpx.post(
            metadata["token_endpoint"], data={"username": "alice", "password": PASSWORD}
        ).json()
        response = client.revoke_token(
            metadata["revocation_endpoint"],
            token=token["refresh_token"],
            token_type_hint="refresh_token",
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert client.get(f"{server}/users/me").status_code == 401
        with pytest.raises(OAuthError) as failed:
            client.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
        assert failed.value.error == "invalid_grant"
        bearer = {"Authorization": f"Bearer {survivor['access_token']}"}
        assert httpx.get(f"{server}/users/me", headers=bearer).status_code == 200
        # The JWKS verifies the survivor's token; its keys are public only.
        keys = httpx.get(metadata["jwks_uri"]).json()["keys"]
        assert all(not {"d", "p", "q", "dp", "dq", "qi"} & set(key) for key in keys)
        kid = jwt.get_unverified_header(survivor["access_token"])["kid"]
        (jwk,) = [key for key in keys if key["kid"] == kid]
        jwt.decode(
            survivor["access_token"],
            jwt.PyJWK(jwk).key,
            algorithms=["ES256"],
            audience="authdb",
            issuer=metadata["issuer"],
        )


def test_real_server_answers_200_to_a_100kb_token(server: str) -> None:
    """Through the real server's body parsing: a 100 KB token is 200 like any unknown one."""
    response = httpx.post(f"{server}/revoke", data={"token": "q" * (100 * 1024)})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
