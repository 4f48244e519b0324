"""Access tokens (JWT, pinned algorithm) and opaque random tokens stored as hashes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt

from authdb.db.models import MAX_ID
from authdb.errors import ServiceUnavailable

_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,18}")
_REQUIRED_CLAIMS = ["sub", "exp", "iat", "jti", "iss", "aud", "sid"]
# Our kids are 43-character thumbprints; anything much longer is not one of ours.
_MAX_KID = 128
_MAX_HEADER_CHARS = 1024
# Our access tokens are a few hundred characters, refresh tokens 43: anything past this is
# refused unread (a parse costs its length).
MAX_TOKEN_CHARS = 8 * 1024


class InvalidAccessToken(Exception):
    """The token is malformed, forged, expired or for another issuer or audience."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: int


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key that access tokens may be verified with, and the one algorithm it allows."""

    algorithm: str
    key: Any  # the HMAC secret, or a public key object


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys of a deployment at one moment: the one that signs, and all that verify.

    With HMAC (``HS256``...), the secret does both and tokens carry no ``kid``. With a key pair,
    ``signing_kid`` goes into every token's header and ``verifying`` maps each ``kid`` whose
    tokens can still be valid to its public key; a token's ``kid`` pins its algorithm.
    """

    signing_algorithm: str
    signing_key: Any  # the HMAC secret, a private key object, or None: nothing can sign
    signing_kid: str | None = None
    verifying: Mapping[str, VerificationKey] = field(default_factory=dict)
    # The public keys as JWKs (RFC 7517), for /.well-known/jwks.json; none under HMAC.
    jwks: tuple[Mapping[str, Any], ...] = ()
    symmetric: bool = False

    @classmethod
    def hmac(cls, secret: str, algorithm: str) -> KeySet:
        return cls(signing_algorithm=algorithm, signing_key=secret, symmetric=True)

    @property
    def is_hmac(self) -> bool:
        return self.symmetric

    def verifies_as(self, other: KeySet) -> bool:
        """Whether ``other`` accepts exactly the tokens this set accepts: the same key pairs
        (a ``kid`` is the RFC 7638 thumbprint of its public key) with the same algorithms.
        Not for HMAC sets, whose secret has no ``kid``: False."""
        if self.symmetric or other.symmetric:
            return False
        mine = {kid: key.algorithm for kid, key in self.verifying.items()}
        return mine == {kid: key.algorithm for kid, key in other.verifying.items()}


class UnknownKeyId(InvalidAccessToken):
    """The token names a ``kid`` this key set does not hold (perhaps a newer key)."""


# How many verified access tokens a codec remembers (see JWTCodec.decode): at most a few MB.
MAX_VERIFIED_TOKENS = 10_000


@dataclass(frozen=True, slots=True)
class JWTCodec:
    """Encodes and verifies access tokens; each key allows exactly one algorithm.

    A codec holds one key set: the key ring installs a new codec when the keys change, and
    what one codec has verified (``decode``) is handed on only to a codec whose keys verify
    the same tokens.
    """

    keys: KeySet
    issuer: str
    audience: str
    lifetime: timedelta
    # Seconds since the epoch, as PyJWT reads the time; tests move it.
    clock: Callable[[], float] = field(default=time.time, compare=False)
    # Tokens verified under these keys: token -> (its claims, its ``exp``), oldest first;
    # handed on to the next codec when the keys it gets verify the same (KeySet.verifies_as).
    verified: dict[str, tuple[AccessClaims, float]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def encode(self, *, user_id: int, session_id: int, now: datetime) -> str:
        claims = {
            "sub": str(user_id),
            "sid": session_id,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "iss": self.issuer,
            "aud": self.audience,
        }
        keys = self.keys
        if keys.signing_key is None:
            raise ServiceUnavailable(detail="No usable token signing key")
        headers = None if keys.signing_kid is None else {"kid": keys.signing_kid}
        return jwt.encode(
            claims, keys.signing_key, algorithm=keys.signing_algorithm, headers=headers
        )

    def decode(self, token: str) -> AccessClaims:
        """The ids a valid token carries. Raises UnknownKeyId for a ``kid`` not in the key
        set, InvalidAccessToken for anything else wrong (RFC 8725 3.1: the algorithm comes from
        our key, never from the token).

        A token verified once is remembered (the latest ``MAX_VERIFIED_TOKENS``) until its
        ``exp``: verifying the same bytes under the same keys can only give the same answer,
        and a client sends its token with every request. Revocation does not rest on this:
        the session behind the token is checked on every request.
        """
        known = self.verified.get(token)
        if known is None:
            known = self._verify(token)
            if len(self.verified) >= MAX_VERIFIED_TOKENS:
                del self.verified[next(iter(self.verified))]  # the oldest
            self.verified[token] = known
        claims, expires = known
        if self.clock() >= expires:  # as PyJWT checks ``exp``, with no leeway
            del self.verified[token]
            raise InvalidAccessToken("Signature has expired")
        return claims

    def _verify(self, token: str) -> tuple[AccessClaims, float]:
        key = self._verification_key(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": _REQUIRED_CLAIMS},
            )
            ids = AccessClaims(
                user_id=_id_claim(claims["sub"], text=True),
                session_id=_id_claim(claims["sid"], text=False),
            )
            return ids, float(claims["exp"])
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            raise InvalidAccessToken(str(exc)) from exc

    def _verification_key(self, token: str) -> VerificationKey:
        keys = self.keys
        if keys.is_hmac:
            return VerificationKey(keys.signing_algorithm, keys.signing_key)
        kid = _unverified_kid(token)
        key = keys.verifying.get(kid)
        if key is None:
            raise UnknownKeyId(kid)
        return key


def _unverified_kid(token: str) -> str:
    """The ``kid`` of the token's header, only to choose a key: ``jwt.decode`` then checks the
    whole token. Reading just the header costs a tenth of PyJWT's full parse."""
    segment = token.partition(".")[0]
    if len(segment) > _MAX_HEADER_CHARS:
        raise InvalidAccessToken("header too long")
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidAccessToken("malformed header") from exc
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str) or len(kid) > _MAX_KID:
        raise InvalidAccessToken("no kid")
    return kid


def _id_claim(value: object, *, text: bool) -> int:
    """An id from a claim, in the one form we mint: ``sub`` a canonical decimal string (RFC 7519
    4.1.2 makes it a string), ``sid`` a JSON integer; within the id range, so safe to query."""
    if text:
        if not isinstance(value, str) or not _CANONICAL_ID.fullmatch(value):
            raise InvalidAccessToken("sub is not an id")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ID:
        raise InvalidAccessToken("not an id")
    return value


def new_opaque_token() -> str:
    """256 bits of randomness, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_opaque_token(token: str) -> str:
    """What is stored instead of the token. A fast hash is right for 256-bit random values."""
    return hashlib.sha256(token.encode()).hexdigest()
