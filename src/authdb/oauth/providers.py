"""A sign-in provider as a client sees it: where to send the browser, and what a callback's
code proves.

Both kinds use the authorization code grant with PKCE S256 (RFC 7636; RFC 9700, section
2.1.1 asks for it even of confidential clients). OpenID Connect adds a ``nonce`` bound into
the ID token; GitHub, which has no ID token, is asked for the account through its REST API
with the access token, which is then dropped (authdb keeps no provider token).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from authdb.names import has_control_characters
from authdb.oauth import oidc
from authdb.oauth.identity import Identity, ProviderDenied, ProviderFailed
from authdb.settings_oauth import ProviderSettings

# A provider that takes longer than this is treated as down.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_USER_AGENT = "authdb"


class Flow(Protocol):
    """What one sign-in carries from the authorization request to the callback."""

    @property
    def state(self) -> str: ...
    @property
    def code_verifier(self) -> str: ...
    @property
    def nonce(self) -> str: ...


def http_client() -> httpx.AsyncClient:
    """A client for provider calls: bounded time, no redirects followed (an endpoint that
    moves is a misconfiguration to see, not to follow)."""
    return httpx.AsyncClient(
        timeout=TIMEOUT, follow_redirects=False, headers={"User-Agent": _USER_AGENT}
    )


class Provider:
    """One configured provider (``AUTHDB_OAUTH_<NAME>_*``); ``kind`` "oidc" or "github"."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.label = settings.label
        self._discovery = oidc.Discovery(settings.issuer) if settings.issuer else None

    @property
    def origins(self) -> list[str]:
        """The origins the browser is sent to (for the pages' CSP ``form-action``)."""
        found = [self.settings.issuer or self.settings.github_url]
        metadata = self._discovery.cached if self._discovery else None
        if metadata is not None:
            found.append(metadata.authorization_endpoint)
        return list(dict.fromkeys(_origin(url) for url in found))

    async def authorization_url(self, flow: Flow, redirect_uri: str) -> str:
        """Where to send the browser to sign in. Raises ProviderFailed (discovery failed)."""
        from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped]
            prepare_grant_uri,
        )
        from authlib.oauth2.rfc7636 import (  # type: ignore[import-untyped]
            create_s256_code_challenge,
        )

        if self._discovery is not None:
            async with http_client() as http:
                endpoint = (await self._discovery.metadata(http)).authorization_endpoint
            extra = {"nonce": flow.nonce}
        else:
            endpoint = self.settings.github_url + "/login/oauth/authorize"
            extra = {"allow_signup": "true"}
        return str(
            prepare_grant_uri(
                endpoint,
                client_id=self.settings.client_id,
                response_type="code",
                redirect_uri=redirect_uri,
                scope=" ".join(self.settings.scopes),
                state=flow.state,
                code_challenge=create_s256_code_challenge(flow.code_verifier),
                code_challenge_method="S256",
                **extra,
            )
        )

    async def identity(self, flow: Flow, code: str, redirect_uri: str) -> Identity:
        """Exchange ``code`` (with the flow's PKCE verifier) and say who signed in.

        Raises ProviderDenied for an OAuth error from the token endpoint (a replayed or
        expired code: ``invalid_grant``), ProviderFailed for anything else that went wrong.
        """
        async with http_client() as http:
            token = await self.exchange(http, code, flow.code_verifier, redirect_uri)
            if self._discovery is not None:
                return await self._oidc_identity(http, token, flow.nonce)
            return await self._github_identity(http, token)

    # --- the code exchange (RFC 6749, section 4.1.3; Authlib encodes the request) -------------

    async def exchange(
        self, http: httpx.AsyncClient, code: str, code_verifier: str, redirect_uri: str
    ) -> Mapping[str, Any]:
        """The token endpoint's answer to ``code`` (RFC 6749, section 4.1.3), with this
        client's authentication. Raises ProviderDenied for an OAuth error (``invalid_grant``,
        ``invalid_client``...), ProviderFailed when it cannot be reached or answers nonsense.
        (``authdb doctor`` sends a made-up code this way to test the client's secret.)"""
        from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped]
        from authlib.oauth2.rfc6749.parameters import prepare_token_request

        if self._discovery is not None:
            metadata = await self._discovery.metadata(http)
            endpoint, method = metadata.token_endpoint, metadata.token_auth_method
        else:  # GitHub documents the client's id and secret as form fields
            endpoint = self.settings.github_url + "/login/oauth/access_token"
            method = "client_secret_post"
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
        )
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        secret = self.settings.client_secret.get_secret_value()
        auth = ClientAuth(self.settings.client_id, secret, method)
        endpoint, headers, body = auth.prepare("POST", endpoint, headers, body)
        try:
            async with http.stream("POST", endpoint, content=body, headers=headers) as response:
                status, answer = response.status_code, await oidc.read_capped(response)
        except httpx.HTTPError as exc:
            raise ProviderFailed(f"token endpoint: {type(exc).__name__}") from None
        return _token_response(status, answer)

    # --- OpenID Connect -----------------------------------------------------------------------

    async def _oidc_identity(
        self, http: httpx.AsyncClient, token: Mapping[str, Any], nonce: str
    ) -> Identity:
        discovery = self._require_discovery()
        claims = await oidc.validate_id_token(
            http,
            discovery,
            token.get("id_token"),
            client_id=self.settings.client_id,
            nonce=nonce,
        )
        if not isinstance(claims.get("email"), str):
            claims = {**await self._userinfo(http, discovery, token, claims["sub"]), **claims}
        return Identity(
            provider=self.name,
            subject=claims["sub"],
            email=_text(claims.get("email")),
            # Some providers send the string "true"; anything else (1 included) is not one.
            email_verified=claims.get("email_verified") is True
            or claims.get("email_verified") == "true",
            username=_text(claims.get("preferred_username")) or _text(claims.get("nickname")),
            name=_text(claims.get("name")),
        )

    async def _userinfo(
        self,
        http: httpx.AsyncClient,
        discovery: oidc.Discovery,
        token: Mapping[str, Any],
        subject: str,
    ) -> dict[str, Any]:
        """The UserInfo claims, when the ID token carries no email (OIDC Core 5.3); {} when
        the provider has no UserInfo endpoint."""
        endpoint = (await discovery.metadata(http)).userinfo_endpoint
        if endpoint is None:
            return {}
        claims = await oidc.fetch_json(
            http, endpoint, "userinfo", headers=_bearer(token["access_token"])
        )
        if not isinstance(claims, dict):
            raise ProviderFailed("userinfo: not a JSON object")
        # Section 5.3.2: a UserInfo answer about anyone else is to be ignored.
        if claims.get("sub") != subject:
            raise ProviderFailed("userinfo: the sub is not the ID token's")
        return {k: v for k, v in claims.items() if k in ("email", "email_verified", "name")}

    def _require_discovery(self) -> oidc.Discovery:
        assert self._discovery is not None
        return self._discovery

    # --- GitHub -------------------------------------------------------------------------------

    async def _github_identity(self, http: httpx.AsyncClient, token: Mapping[str, Any]) -> Identity:
        headers = {
            **_bearer(token["access_token"]),
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        api = self.settings.api_url
        user = await oidc.fetch_json(http, api + "/user", "GitHub user", headers=headers)
        emails = await oidc.fetch_json(http, api + "/user/emails", "GitHub emails", headers=headers)
        github_id = user.get("id") if isinstance(user, dict) else None
        # GitHub's ids are positive integers (a bool is an int to Python, not to GitHub).
        if type(github_id) is not int or not 0 < github_id < 10**20:
            raise ProviderFailed("GitHub user: no numeric id")
        email, verified = _github_email(emails)
        return Identity(
            provider=self.name,
            subject=str(github_id),
            email=email,
            email_verified=verified,
            username=_text(user.get("login")),
            name=_text(user.get("name")),
        )


def _token_response(status: int, body: bytes | None) -> Mapping[str, Any]:
    """The token endpoint's JSON (RFC 6749, sections 5.1 and 5.2; GitHub answers its errors
    with 200). Raises ProviderDenied for an OAuth error, ProviderFailed otherwise."""
    if body is None:
        raise ProviderFailed("token endpoint: answer too large")
    try:
        token = json.loads(body)
    except ValueError:
        token = None
    if not isinstance(token, dict):
        raise ProviderFailed(f"token endpoint: HTTP {status}, not a JSON object")
    if token.get("error") is not None:
        raise ProviderDenied(token["error"])
    if status != 200 or not isinstance(token.get("access_token"), str):
        raise ProviderFailed(f"token endpoint: HTTP {status}, no access token")
    return token


def _github_email(emails: object) -> tuple[str | None, bool]:
    """The primary address and whether GitHub verified it; else the first verified one."""
    if not isinstance(emails, list):
        return None, False
    entries = [e for e in emails if isinstance(e, dict) and isinstance(e.get("email"), str)]
    entries = [e for e in entries if _text(e["email"]) is not None]
    for entry in entries:
        if entry.get("primary") is True:
            if entry.get("verified") is True:
                return _text(entry["email"]), True
            break
    for entry in entries:
        if entry.get("verified") is True:
            return _text(entry["email"]), True
    primary = next((e for e in entries if e.get("primary") is True), None)
    return (_text(primary["email"]), False) if primary else (None, False)


def _bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def _text(value: object) -> str | None:
    """A claim as text: trimmed, None when absent, empty, over 320 characters or holding a
    control character (PostgreSQL refuses NUL; escapes would forge page or log text)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 320 or has_control_characters(text):
        return None
    return text


def _origin(url: str) -> str:
    parts = httpx.URL(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.host}{port}"
