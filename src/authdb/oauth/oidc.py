"""OpenID Connect: a provider's metadata and keys, and the validation of its ID tokens.

Discovery (OpenID Connect Discovery 1.0, section 4): ``{issuer}/.well-known/openid-configuration``,
whose ``issuer`` must be the configured one exactly (section 4.3). The document and the JWKS
are cached per process; an ID token signed by a key not in the cached set makes one fresh
fetch (the provider rotated), never more than one a minute.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from authdb.names import has_control_characters
from authdb.oauth.identity import ProviderFailed, error_code

# Asymmetric JWS algorithms only (RFC 8725, section 3.1): never "none", never HS* (which
# would make the client secret a signing key).
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
METADATA_TTL_SECONDS = 3600.0
_KEYS_REFETCH_SECONDS = 60.0
# Clock skew tolerated on exp/iat/nbf.
LEEWAY_SECONDS = 60
MAX_DOCUMENT_BYTES = 512 * 1024
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _secure(url: object, *, local: bool) -> bool:
    """An https URL; with ``local`` (a loopback issuer, for development) http on a loopback
    host too."""
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (
        local and parts.scheme == "http" and parts.hostname.lower() in _LOOPBACK
    )


async def fetch_json(http: httpx.AsyncClient, url: str, what: str, **kwargs: Any) -> Any:
    """GET ``url`` and parse its JSON (at most 512 KiB). Raises ProviderFailed, its message
    starting with ``what``: "... answered HTTP 404", "... not reachable: reason", ..."""
    try:
        async with http.stream("GET", url, **kwargs) as response:
            if response.status_code != 200:
                raise ProviderFailed(f"{what} answered HTTP {response.status_code}")
            body = await read_capped(response)
    except httpx.HTTPError as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise ProviderFailed(f"{what} not reachable: {reason}") from None
    if body is None:
        raise ProviderFailed(f"{what}: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise ProviderFailed(f"{what}: not JSON") from None


async def read_capped(response: httpx.Response) -> bytes | None:
    """A streamed response's body, or None past ``MAX_DOCUMENT_BYTES`` (read no further)."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_DOCUMENT_BYTES:
            return None
    return body


@dataclass(frozen=True, slots=True)
class Metadata:
    """The parts of a discovery document authdb uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    # The ID token algorithms both sides accept, the provider's order.
    algorithms: tuple[str, ...]
    # client_secret_basic unless the provider lists only client_secret_post.
    token_auth_method: str

    @classmethod
    def parse(cls, document: object, issuer: str) -> Metadata:
        """Raises ProviderFailed for a document that is not this issuer's or lacks a part."""
        if not isinstance(document, dict):
            raise ProviderFailed("discovery document is not a JSON object")
        # Section 4.3: exactly the issuer asked for, else a mix-up (RFC 9700, section 4.4).
        if document.get("issuer") != issuer:
            raise ProviderFailed("discovery document names another issuer")
        # http only for a loopback issuer (development): an https provider's endpoints are
        # https, so the client secret never travels in clear, nor to this host's own ports.
        local = not issuer.startswith("https://")
        urls = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not _secure(document.get(name), local=local):
                raise ProviderFailed(f"discovery document has no https {name}")
            urls[name] = str(document[name])
        userinfo = document.get("userinfo_endpoint")
        offered = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(a for a in offered if isinstance(a, str) and a in ID_TOKEN_ALGORITHMS)
        if not algorithms:
            raise ProviderFailed("the provider signs ID tokens with no algorithm authdb accepts")
        methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        method = (
            "client_secret_post"
            if "client_secret_basic" not in methods and "client_secret_post" in methods
            else "client_secret_basic"
        )
        return cls(
            issuer=issuer,
            authorization_endpoint=urls["authorization_endpoint"],
            token_endpoint=urls["token_endpoint"],
            jwks_uri=urls["jwks_uri"],
            userinfo_endpoint=str(userinfo) if _secure(userinfo, local=local) else None,
            algorithms=algorithms,
            token_auth_method=method,
        )


@dataclass
class Discovery:
    """One issuer's metadata and keys, fetched when first needed and cached."""

    issuer: str
    _metadata: Metadata | None = None
    _metadata_at: float = 0.0
    _keys: list[_Key] | None = None
    _keys_at: float = 0.0
    _clock: Any = field(default=time.monotonic)

    @property
    def cached(self) -> Metadata | None:
        """The metadata fetched last, if any (no network)."""
        return self._metadata

    async def metadata(self, http: httpx.AsyncClient) -> Metadata:
        """The discovery document (cached an hour). Raises ProviderFailed."""
        now = self._clock()
        if self._metadata is None or now - self._metadata_at > METADATA_TTL_SECONDS:
            # Section 4.1: the issuer without a trailing slash, then the well-known path.
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await fetch_json(http, url, "discovery")
            self._metadata, self._metadata_at = Metadata.parse(document, self.issuer), now
        return self._metadata

    async def key(self, http: httpx.AsyncClient, kid: str | None, algorithm: str) -> Any:
        """The public key that signed a token (by ``kid``; without one, the only key fit for
        ``algorithm``). A kid not in the cached set refetches the set, at most once a
        minute. Raises ProviderFailed when no key matches."""
        metadata = await self.metadata(http)
        now = self._clock()
        fresh = False
        if self._keys is None or now - self._keys_at > METADATA_TTL_SECONDS:
            await self._fetch_keys(http, metadata, now)
            fresh = True
        found = _pick(self._keys or [], kid, algorithm)
        if found is None and not fresh and now - self._keys_at > _KEYS_REFETCH_SECONDS:
            await self._fetch_keys(http, metadata, now)
            found = _pick(self._keys or [], kid, algorithm)
        if found is None:
            raise ProviderFailed("no key of the provider's JWKS signed the ID token")
        return found

    async def _fetch_keys(self, http: httpx.AsyncClient, metadata: Metadata, now: float) -> None:
        document = await fetch_json(http, metadata.jwks_uri, "JWKS")
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ProviderFailed("JWKS is not a key set")
        keys = []
        for entry in entries:
            try:
                keys.append(_Key(entry, jwt.PyJWK.from_dict(entry)))
            except (jwt.PyJWTError, TypeError, ValueError, KeyError, AttributeError):
                continue  # a key type or curve PyJWT does not know: not one of ours to use
        self._keys, self._keys_at = keys, now


@dataclass(frozen=True, slots=True)
class _Key:
    """A JWK as published, and PyJWT's reading of it."""

    data: dict[str, Any]
    jwk: jwt.PyJWK

    def fits(self, algorithm: str) -> bool:
        """May verify ``algorithm``: a signing key of its type, of that ``alg`` if stated."""
        if self.data.get("use") not in (None, "sig"):
            return False
        if self.data.get("alg") not in (None, algorithm):
            return False
        kty = {"R": "RSA", "P": "RSA", "E": "EC"}.get(algorithm[0], "OKP")
        return self.data.get("kty") == kty


def _pick(keys: list[_Key], kid: str | None, algorithm: str) -> Any:
    """The key named ``kid``; without a kid, the only key fit for ``algorithm``."""
    if kid is not None:
        named = [key for key in keys if key.data.get("kid") == kid and key.fits(algorithm)]
    else:
        named = [key for key in keys if key.fits(algorithm)]
    return named[0].jwk.key if len(named) == 1 else None


async def validate_id_token(
    http: httpx.AsyncClient,
    discovery: Discovery,
    id_token: object,
    *,
    client_id: str,
    nonce: str,
) -> dict[str, Any]:
    """The claims of a valid ID token (OpenID Connect Core 1.0, section 3.1.3.7): signed by
    the issuer's key with an accepted algorithm, ``iss`` the issuer, ``aud`` holding
    ``client_id`` (``azp`` it too when there are several), unexpired, issued, ``nonce`` the
    flow's. Raises ProviderFailed saying which check failed."""
    if not isinstance(id_token, str) or not id_token:
        raise ProviderFailed("the token response has no ID token")
    metadata = await discovery.metadata(http)
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise ProviderFailed("the ID token is not a JWT") from None
    algorithm = header.get("alg")
    if algorithm not in metadata.algorithms:
        shown = repr(error_code(algorithm)) if isinstance(algorithm, str) else "no algorithm"
        raise ProviderFailed(f"the ID token is signed with {shown}, not an accepted algorithm")
    kid = header.get("kid")
    key = await discovery.key(http, kid if isinstance(kid, str) else None, algorithm)
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key,
            algorithms=[algorithm],
            audience=client_id,
            issuer=metadata.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError as exc:
        raise ProviderFailed(f"the ID token failed a check: {type(exc).__name__}") from None
    audience = claims["aud"]
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise ProviderFailed("the ID token has several audiences and another azp")
    presented = claims.get("nonce")
    if not isinstance(presented, str) or not hmac.compare_digest(
        presented.encode(), nonce.encode()
    ):
        raise ProviderFailed("the ID token's nonce is not this sign-in's")
    subject = claims.get("sub")
    if (
        not isinstance(subject, str)
        or not subject
        or len(subject) > 255
        or has_control_characters(subject)
    ):
        raise ProviderFailed("the ID token's sub is not 1 to 255 printable characters")
    return claims
