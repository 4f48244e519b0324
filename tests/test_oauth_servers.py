"""The test identity providers themselves (tests/oauth_servers.py), as sign-in tests use them."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client

from tests.github_standin import GitHubStandin
from tests.oauth_servers import OIDCProvider, follow_to_callback, pkce_pair, start_oidc_provider

pytest_plugins = ["tests.oauth_servers"]

RP = "http://127.0.0.1:9/callback"  # never requested: follow_to_callback stops before it


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


def query(url: str) -> dict[str, str]:
    assert url.startswith(RP + "?"), url
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def new_account(provider: OIDCProvider) -> tuple[str, str]:
    sub = f"user-{uuid.uuid4().hex[:10]}"
    email = f"{sub}@example.com"
    provider.add_account(sub, email, email_verified=True, preferred_username=sub, name="Ada L")
    return sub, email


async def oidc_code(
    http: httpx.AsyncClient, provider: OIDCProvider, client_id: str, login: str, **extra: str
) -> tuple[str, str, str]:
    """Sign in; returns (code, code_verifier, nonce)."""
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    url = provider.authorize_url(
        client_id, RP, state=state, code_challenge=challenge, nonce=nonce, **extra
    )
    params = query(await follow_to_callback(http, url, login))
    assert params["state"] == state
    assert params["iss"] == provider.issuer  # RFC 9207: oidc-provider adds iss
    return params["code"], verifier, nonce


async def test_discovery(oidc_provider: OIDCProvider, http: httpx.AsyncClient) -> None:
    response = await http.get(oidc_provider.discovery_url)
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == oidc_provider.issuer
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        doc["token_endpoint_auth_methods_supported"]
    )
    assert doc["registration_endpoint"] == f"{oidc_provider.issuer}/reg"
    assert "RS256" in doc["id_token_signing_alg_values_supported"]


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_oidc_code_flow_with_pkce(
    oidc_provider: OIDCProvider, http: httpx.AsyncClient, auth_method: str
) -> None:
    doc = oidc_provider.discovery()
    client_id, secret = oidc_provider.register_client([RP], token_endpoint_auth_method=auth_method)
    sub, email = new_account(oidc_provider)
    code, verifier, nonce = await oidc_code(http, oidc_provider, client_id, sub)

    async with AsyncOAuth2Client(
        client_id, secret, token_endpoint_auth_method=auth_method, trust_env=False
    ) as rp:
        token = await rp.fetch_token(
            doc["token_endpoint"], code=code, redirect_uri=RP, code_verifier=verifier
        )
    jwks = jwt.PyJWKSet.from_dict((await http.get(doc["jwks_uri"])).json())
    header = jwt.get_unverified_header(token["id_token"])
    assert header["alg"] == "RS256"
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    claims = jwt.decode(
        token["id_token"],
        key.key,
        algorithms=["RS256"],
        audience=client_id,
        issuer=oidc_provider.issuer,
    )
    assert claims["sub"] == sub
    assert claims["email"] == email
    assert claims["email_verified"] is True
    assert claims["preferred_username"] == sub
    assert claims["name"] == "Ada L"
    assert claims["nonce"] == nonce

    userinfo = await http.get(
        doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert userinfo.status_code == 200
    assert userinfo.json()["email"] == email


async def exchange(
    http: httpx.AsyncClient,
    provider: OIDCProvider,
    client: tuple[str, str],
    code: str,
    verifier: str,
) -> httpx.Response:
    return await http.post(
        provider.discovery()["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": RP,
            "code_verifier": verifier,
        },
        auth=client,
    )


async def test_oidc_refuses_wrong_verifier_and_replayed_code(
    oidc_provider: OIDCProvider, http: httpx.AsyncClient
) -> None:
    client = oidc_provider.register_client([RP])
    sub, _ = new_account(oidc_provider)

    code, _verifier, _ = await oidc_code(http, oidc_provider, client[0], sub)
    wrong = await exchange(http, oidc_provider, client, code, pkce_pair()[0])
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"

    code, verifier, _ = await oidc_code(http, oidc_provider, client[0], sub, prompt="login")
    assert (await exchange(http, oidc_provider, client, code, verifier)).status_code == 200
    replay = await exchange(http, oidc_provider, client, code, verifier)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"


async def test_oidc_pkce_is_required(oidc_provider: OIDCProvider, http: httpx.AsyncClient) -> None:
    client_id, _ = oidc_provider.register_client([RP])
    response = await http.get(
        f"{oidc_provider.issuer}/auth",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": RP,
            "scope": "openid",
            "state": "s",
        },
    )
    assert response.status_code == 303
    params = query(response.headers["location"])
    assert params["error"] == "invalid_request"


async def test_oidc_deny_and_unknown_redirect(
    oidc_provider: OIDCProvider, http: httpx.AsyncClient
) -> None:
    client_id, _ = oidc_provider.register_client([RP])
    sub, _ = new_account(oidc_provider)
    url = oidc_provider.authorize_url(client_id, RP, state="st8", code_challenge=pkce_pair()[1])
    params = query(await follow_to_callback(http, url, sub, deny=True))
    assert params["error"] == "access_denied"
    assert params["state"] == "st8"

    with pytest.raises(AssertionError, match="400"):
        await follow_to_callback(http, url.replace("callback", "elsewhere"), sub)
    with pytest.raises(AssertionError, match="refused the login"):
        await follow_to_callback(http, url, "nobody-" + sub)


async def test_oidc_session_skips_page_unless_prompt_login(
    oidc_provider: OIDCProvider, http: httpx.AsyncClient
) -> None:
    client_id, _ = oidc_provider.register_client([RP])
    sub, _ = new_account(oidc_provider)
    await oidc_code(http, oidc_provider, client_id, sub)
    # Same cookies: signed in already, the page is skipped (so there is nothing to deny) ...
    url = oidc_provider.authorize_url(client_id, RP, state="x", code_challenge=pkce_pair()[1])
    with pytest.raises(AssertionError, match="no page to deny"):
        await follow_to_callback(http, url, sub, deny=True)
    # ... unless prompt=login.
    params = query(await follow_to_callback(http, url + "&prompt=login", sub, deny=True))
    assert params["error"] == "access_denied"


async def test_oidc_provider_down_then_back(tmp_path: Path, http: httpx.AsyncClient) -> None:
    provider = start_oidc_provider(state_dir=tmp_path)
    try:
        client = provider.register_client([RP])
        sub, _ = new_account(provider)
        provider.stop()
        with pytest.raises(httpx.ConnectError):
            await http.get(provider.discovery_url)
        provider.start()  # same port, same key, clients and accounts
        code, verifier, _ = await oidc_code(http, provider, client[0], sub)
        assert (await exchange(http, provider, client, code, verifier)).status_code == 200
    finally:
        provider.stop()


# ---- GitHub stand-in ----


def github_user(standin: GitHubStandin) -> tuple[int, str]:
    uid = secrets.randbelow(10**9) + 1
    login = f"octo{uid}"
    standin.add_user(
        uid,
        login,
        name="Mona",
        emails=[
            {"email": f"{login}@example.com", "primary": True, "verified": True},
            {"email": f"{login}@old.example", "verified": False},
        ],
    )
    return uid, login


async def test_github_flow(github_standin: GitHubStandin, http: httpx.AsyncClient) -> None:
    client_id, secret = github_standin.add_client([RP])
    uid, login = github_user(github_standin)
    async with AsyncOAuth2Client(
        client_id,
        secret,
        redirect_uri=RP,
        scope="read:user user:email",
        code_challenge_method="S256",
        trust_env=False,
    ) as rp:
        verifier = secrets.token_urlsafe(48)
        url, state = rp.create_authorization_url(
            github_standin.authorize_url, code_verifier=verifier
        )
        callback = await follow_to_callback(http, url, login)
        assert query(callback)["state"] == state
        token = await rp.fetch_token(
            github_standin.token_url,
            authorization_response=callback,
            code_verifier=verifier,
            headers={"Accept": "application/json"},
        )
        assert token["token_type"] == "bearer"
        assert token["scope"] == "read:user,user:email"
        user = (await rp.get(f"{github_standin.api_url}/user")).json()
        emails = (await rp.get(f"{github_standin.api_url}/user/emails")).json()
    assert user["id"] == uid and user["login"] == login and user["name"] == "Mona"
    assert user["email"] is None
    assert emails == [
        {
            "email": f"{login}@example.com",
            "primary": True,
            "verified": True,
            "visibility": "public",
        },
        {"email": f"{login}@old.example", "primary": False, "verified": False, "visibility": None},
    ]
    as_token = await http.get(
        f"{github_standin.api_url}/user",
        headers={"Authorization": f"token {token['access_token']}"},
    )
    assert as_token.json()["id"] == uid
    bad = await http.get(f"{github_standin.api_url}/user", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json()["message"] == "Bad credentials"


async def github_code(
    http: httpx.AsyncClient, standin: GitHubStandin, client_id: str, login: str, scope: str = ""
) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    url = str(
        httpx.URL(
            standin.authorize_url,
            params={
                "client_id": client_id,
                "redirect_uri": RP,
                "scope": scope,
                "state": "s",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
    )
    return query(await follow_to_callback(http, url, login))["code"], verifier


async def test_github_token_errors(github_standin: GitHubStandin, http: httpx.AsyncClient) -> None:
    client_id, secret = github_standin.add_client([RP])
    _, login = github_user(github_standin)
    token_url = github_standin.token_url
    json_accept = {"Accept": "application/json"}

    async def post(
        code: str, verifier: str, secret_: str = secret, basic: bool = False
    ) -> dict[str, str]:
        form = {"code": code, "redirect_uri": RP, "code_verifier": verifier}
        if basic:
            raw = base64.b64encode(f"{client_id}:{secret_}".encode()).decode()
            response = await http.post(
                token_url, data=form, headers={**json_accept, "Authorization": f"Basic {raw}"}
            )
        else:
            form |= {"client_id": client_id, "client_secret": secret_}
            response = await http.post(token_url, data=form, headers=json_accept)
        assert response.status_code == 200
        return dict(response.json())

    code, verifier = await github_code(http, github_standin, client_id, login)
    assert (await post(code, verifier, secret_="wrong"))["error"] == "incorrect_client_credentials"
    code, verifier = await github_code(http, github_standin, client_id, login)
    assert (await post(code, pkce_pair()[0]))["error"] == "bad_verification_code"
    code, verifier = await github_code(http, github_standin, client_id, login)
    assert "access_token" in await post(code, verifier, basic=True)
    replay = await post(code, verifier, basic=True)
    assert replay["error"] == "bad_verification_code"
    assert replay["error_description"] == "The code passed is incorrect or expired."
    code, verifier = await github_code(http, github_standin, client_id, login)
    github_standin.expire_codes()
    assert (await post(code, verifier))["error"] == "bad_verification_code"

    # No user:email scope: the emails endpoint is not found; the default answer is form-encoded.
    code, verifier = await github_code(http, github_standin, client_id, login, scope="read:user")
    form = await http.post(
        token_url,
        data={
            "client_id": client_id,
            "client_secret": secret,
            "code": code,
            "code_verifier": verifier,
        },
    )
    token = parse_qs(form.text)["access_token"][0]
    emails = await http.get(
        f"{github_standin.api_url}/user/emails", headers={"Authorization": f"Bearer {token}"}
    )
    assert emails.status_code == 404


async def test_github_cancel_and_bad_requests(
    github_standin: GitHubStandin, http: httpx.AsyncClient
) -> None:
    client_id, _ = github_standin.add_client([RP])
    _, login = github_user(github_standin)
    url = str(
        httpx.URL(
            github_standin.authorize_url,
            params={"client_id": client_id, "redirect_uri": RP, "state": "abc"},
        )
    )
    params = query(await follow_to_callback(http, url, login, deny=True))
    assert params["error"] == "access_denied"
    assert params["state"] == "abc"
    assert params["error_description"]

    unknown = await http.get(github_standin.authorize_url, params={"client_id": "nope"})
    assert unknown.status_code == 400
    elsewhere = await http.get(
        github_standin.authorize_url,
        params={"client_id": client_id, "redirect_uri": "http://127.0.0.1:9/other"},
    )
    assert elsewhere.status_code == 400
    assert "location" not in elsewhere.headers
