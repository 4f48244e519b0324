"""The network half of the ``oauth <name>`` checks (see ``authdb.doctor.providers``): it
speaks HTTP with the sign-in code's own client, so it needs the ``oauth`` extra."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import jwt

from authdb.doctor.findings import TIMEOUT_SECONDS, reason, shown_url
from authdb.names import has_control_characters
from authdb.oauth import CLIENT_REFUSED, ProviderDenied, ProviderFailed, oidc
from authdb.oauth.providers import Provider, http_client
from authdb.settings_oauth import ProviderSettings, variable

# The token endpoint's answers to a made-up code: the client passed, or it did not.
_CODE_REFUSED = frozenset({"invalid_grant", "bad_verification_code"})


class Problem(Exception):
    """What is wrong, as the check's message says it."""


async def probe(provider: ProviderSettings, callback: str) -> tuple[str, str | None]:
    """``(what was found, a warning's words or None)``; raises Problem."""
    async with http_client() as http:
        http.timeout = httpx.Timeout(TIMEOUT_SECONDS)
        if provider.kind == "oidc":
            found = await _oidc(http, provider)
        else:
            found = await _github(http, provider)
        return found, await _client(http, provider, callback)


async def _oidc(http: httpx.AsyncClient, provider: ProviderSettings) -> str:
    """``issuer ...: discovery and JWKS (N keys)``, or Problem."""
    issuer = provider.issuer or ""
    where = variable(provider.name, "issuer")
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = await _get_json(http, url, f"{shown_url(url)} ({where})")
    if isinstance(document, dict) and document.get("issuer") != issuer:
        named = document.get("issuer")
        raise Problem(
            f"the discovery document at {shown_url(url)} names the issuer {_quoted(named)}, "
            f"not {issuer} ({where}); set it to the issuer exactly as the provider writes it"
        )
    try:
        metadata = oidc.Metadata.parse(document, issuer)
    except ProviderFailed as exc:
        raise Problem(f"{shown_url(url)} ({where}): {exc}") from None
    keys = await _get_json(http, metadata.jwks_uri, f"JWKS {shown_url(metadata.jwks_uri)}")
    entries = keys.get("keys") if isinstance(keys, dict) else None
    usable = [entry for entry in entries or [] if _usable_key(entry)]
    if not usable:
        raise Problem(f"JWKS {shown_url(metadata.jwks_uri)} holds no signing key authdb can use")
    count = f"{len(usable)} key{'' if len(usable) == 1 else 's'}"
    return f"issuer {issuer}: discovery and JWKS ({count})"


def _usable_key(entry: object) -> bool:
    if not isinstance(entry, dict) or entry.get("use") not in (None, "sig"):
        return False
    try:
        jwt.PyJWK.from_dict(entry)
    except (jwt.PyJWTError, TypeError, ValueError, KeyError, AttributeError):
        return False
    return True


async def _github(http: httpx.AsyncClient, provider: ProviderSettings) -> str:
    """``GitHub at ...: API answers``, or Problem. ``/user`` without a token is 401 at
    github.com and at GitHub Enterprise Server (whose API is ``https://HOST/api/v3``)."""
    url = provider.api_url + "/user"
    where = variable(provider.name, "api_url")
    try:
        response = await http.get(url, headers={"Accept": "application/vnd.github+json"})
    except httpx.HTTPError as exc:
        raise Problem(f"{shown_url(url)} ({where}) not reachable: {reason(exc)}") from None
    if response.status_code != 401:
        raise Problem(
            f"{shown_url(url)} ({where}) answered HTTP {response.status_code}, not GitHub's "
            "401 without a token: is it GitHub's REST API (GitHub Enterprise Server: "
            "https://HOST/api/v3)?"
        )
    return f"GitHub at {provider.github_url}: API {provider.api_url} answers"


async def _client(http: httpx.AsyncClient, provider: ProviderSettings, callback: str) -> str | None:
    """Send a made-up code to the token endpoint as a sign-in would: None when the provider
    refused the code (so not the client), a warning's words when it cannot be told; Problem
    when the client was refused or the endpoint cannot be reached."""
    names = f"{variable(provider.name, 'client_id')}, {variable(provider.name, 'client_secret')}"
    try:
        # The sign-in's own exchange (same endpoint, client authentication, encoding).
        await Provider(provider).exchange(
            http, "authdb-doctor-" + secrets.token_urlsafe(16), secrets.token_urlsafe(48), callback
        )
    except ProviderDenied as exc:
        said = _quoted(exc.error)
        if exc.error in _CODE_REFUSED:
            return None
        if exc.error in CLIENT_REFUSED:
            raise Problem(
                f"the token endpoint refused the client ({said}): check {names}"
            ) from None
        return f"the token endpoint answered {said}, so the client id and secret are unconfirmed"
    except ProviderFailed as exc:
        raise Problem(f"token endpoint: {exc}") from None
    return "the token endpoint accepted a made-up code"


async def _get_json(http: httpx.AsyncClient, url: str, what: str) -> Any:
    """The JSON at ``url``, read as sign-in reads it, or Problem saying why not."""
    try:
        return await oidc.fetch_json(http, url, what, headers={"Accept": "application/json"})
    except ProviderFailed as exc:
        raise Problem(str(exc)) from None


def _quoted(value: object) -> str:
    """A provider's word, fit for one line: quoted, printable, at most 80 characters."""
    text = value if isinstance(value, str) else repr(value)
    if has_control_characters(text):
        text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text[:80])
