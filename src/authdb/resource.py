"""Verify authdb's access tokens in another service, with its public keys and no database.

```python
from fastapi import Depends, FastAPI
from authdb.resource import AccessTokenClaims, TokenVerifier

verifier = TokenVerifier(
    jwks_url="https://auth.example.com/.well-known/jwks.json",
    issuer="authdb",
    audience="authdb",
)
app = FastAPI()

@app.get("/orders")
async def orders(claims: AccessTokenClaims = Depends(verifier)) -> list[str]:
    return [f"orders of user {claims['sub']}"]
```

The key set is fetched with PyJWT's ``PyJWKClient`` (in a worker thread: it blocks) and kept
in memory. It is fetched again when it is older than ``max_age_seconds`` (so a retired key
drops out), and when a token names an unknown ``kid``, but then at most once every
``min_refetch_seconds``, so made-up kids cannot turn every request into a fetch. (authdb
publishes its next key ahead of a rotation, so a verifier normally knows a key before it
signs.) When a fetch fails, the keys already known stay in use and the fetch is tried again
after a few seconds; while no key set was ever fetched, the dependency answers 503.

What a stateless check cannot see: a session ended at authdb (logout, a password change,
``POST /revoke``) still has valid access tokens until they expire, at most
``AUTHDB_ACCESS_TOKEN_EXPIRE_MINUTES`` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict, cast

import jwt
from anyio import to_thread
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

log = logging.getLogger("authdb.resource")

# The key-pair algorithms authdb signs with. Never an HMAC one: a published key is public.
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
_REQUIRED_CLAIMS = ["sub", "exp", "iat", "jti", "iss", "aud", "sid"]
# Our tokens are a few hundred characters; a longer header is refused unparsed.
_MAX_TOKEN_CHARS = 8 * 1024
# RFC 7518 3.3: RS256 keys of at least 2048 bits.
_MIN_RSA_BITS = 2048
# After a failed fetch, the next one may come this much sooner than min_refetch_seconds.
_RETRY_SECONDS = 5
_bearer = HTTPBearer(auto_error=False, description="An access token from authdb's `/token`")


class AccessTokenClaims(TypedDict):
    """The claims of an authdb access token (RFC 7519 names; times in seconds since the epoch).

    ``sub`` is the user id as a string, ``sid`` the id of the session that issued the token.
    """

    sub: str
    sid: int
    exp: int
    iat: int
    jti: str
    iss: str
    aud: str


class InvalidToken(Exception):
    """The token is malformed, forged, expired, for someone else, or its key is unknown."""


class KeysUnavailable(InvalidToken):
    """No key set could be fetched yet (authdb down or unreachable): nothing can be checked."""


class TokenVerifier:
    """Checks authdb access tokens against its JWKS: signature, ``exp``, ``iss`` and ``aud``.

    An instance is a FastAPI dependency (``Depends(verifier)`` gives the claims, or answers
    401 with ``WWW-Authenticate: Bearer``) and has ``verify(token)`` for other code.

    ``algorithms`` are the JWS algorithms accepted (each key allows only its own ``alg``);
    ``leeway_seconds`` tolerates clocks that disagree; ``timeout_seconds`` bounds a fetch.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        min_refetch_seconds: float = 30.0,
        max_age_seconds: float = 300.0,
        leeway_seconds: float = 0.0,
        timeout_seconds: float = 5.0,
    ) -> None:
        unsupported = set(algorithms) - set(DEFAULT_ALGORITHMS)
        if unsupported:
            raise ValueError(
                f"unsupported algorithms {sorted(unsupported)}: use RS256, ES256, EdDSA"
            )
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self.min_refetch_seconds = min_refetch_seconds
        self.max_age_seconds = max_age_seconds
        self.leeway_seconds = leeway_seconds
        # The set cache is ours (async, with the refetch limit); PyJWKClient fetches and parses.
        self._client = jwt.PyJWKClient(jwks_url, cache_jwk_set=False, timeout=timeout_seconds)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")  # last successful fetch
        self._next_fetch_at = float("-inf")  # no fetch before this (monotonic seconds)
        self._fetching: asyncio.Task[None] | None = None
        self.timeout_seconds = timeout_seconds

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> AccessTokenClaims:
        if credentials is None:
            raise _unauthorized("Not authenticated")
        try:
            return await self.verify(credentials.credentials)
        except KeysUnavailable:
            # Not the client's fault: a 401 would make it throw a good token away.
            raise HTTPException(
                503, "Token keys unavailable", headers={"Retry-After": str(_RETRY_SECONDS)}
            ) from None
        except InvalidToken as exc:
            log.debug("refused a bearer token: %s", exc)
            raise _unauthorized("Could not validate credentials") from None

    async def verify(self, token: str) -> AccessTokenClaims:
        """The claims of a valid token (a coroutine: ``await verifier.verify(token)``).

        Raises InvalidToken, or its subclass KeysUnavailable while no key set could be
        fetched at all.
        """
        if len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("token too long")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        if not isinstance(kid, str):
            raise InvalidToken("the token names no kid")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_seconds,
                options={"require": _REQUIRED_CLAIMS},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from exc
        return cast(AccessTokenClaims, claims)

    async def _key(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            if self._stale():
                self._refresh()  # in the background: a slow JWKS never holds up known keys
            return key
        refresh = self._refresh()
        if refresh is not None:
            # An unknown kid waits for the fetch, but no longer than one fetch may take.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(refresh), self.timeout_seconds)
        key = self._keys.get(kid)
        if key is None:
            if self._fetched_at == float("-inf"):
                raise KeysUnavailable("no key set could be fetched yet")
            raise InvalidToken(f"unknown kid {kid!r}")
        return key

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched_at >= self.max_age_seconds

    def _refresh(self) -> asyncio.Task[None] | None:
        """The running fetch, or a new one if one is due; None when none may run yet."""
        running = self._fetching
        if running is not None and not running.done():
            if running.get_loop() is asyncio.get_running_loop():
                return running
            self._next_fetch_at = float("-inf")  # left behind by a closed event loop
        if time.monotonic() < self._next_fetch_at:
            return None
        self._fetching = asyncio.ensure_future(self._fetch())
        return self._fetching

    async def _fetch(self) -> None:
        """Replace the keys with a fresh JWKS; on any failure keep the ones known (logged).

        After a success the next fetch waits ``min_refetch_seconds``; after a failure only a
        few seconds (counted from its end), so a verifier that started before authdb catches
        up soon, and a JWKS that is down is still not asked on every request.
        """
        self._next_fetch_at = float("inf")  # this one runs: no other until it ends
        try:
            await self._fetch_once()
        except Exception as exc:
            self._failed(f"could not use the JWKS: {exc!r}")
        finally:
            if self._next_fetch_at == float("inf"):  # cancelled: allow the next one soon
                self._next_fetch_at = time.monotonic() + self._retry_seconds()

    async def _fetch_once(self) -> None:
        try:
            data = await to_thread.run_sync(self._client.fetch_data)
        except (jwt.PyJWKClientError, ValueError, OSError, RecursionError) as exc:
            self._failed(f"could not fetch the JWKS: {exc}")
            return
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            self._failed("the JWKS is not a JSON object with a list of keys")
            return
        self._keys = self._usable(entries)
        self._fetched_at = time.monotonic()
        self._next_fetch_at = self._fetched_at + self.min_refetch_seconds

    def _retry_seconds(self) -> float:
        return min(_RETRY_SECONDS, self.min_refetch_seconds)

    def _failed(self, reason: str) -> None:
        kept = f"keeping the {len(self._keys)} keys known" if self._keys else "no keys known yet"
        log.warning("%s; %s", reason, kept)
        self._next_fetch_at = time.monotonic() + self._retry_seconds()

    def _usable(self, entries: list[Any]) -> dict[str, jwt.PyJWK]:
        """The signing keys of the allowed algorithms, by kid; others are skipped."""
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            kid, algorithm = entry.get("kid"), entry.get("alg")
            if not isinstance(kid, str) or algorithm not in self.algorithms:
                continue
            try:
                key = jwt.PyJWK(entry, algorithm)
            except jwt.PyJWTError as exc:
                log.warning("skipping JWKS key %r: %s", kid, exc)
                continue
            if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < _MIN_RSA_BITS:
                log.warning("skipping JWKS key %r: RSA key of %d bits", kid, key.key.key_size)
                continue
            keys[kid] = key
        if not keys:
            log.warning("the JWKS has no usable key (is authdb on HS256?)")
        return keys


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
