"""Access tokens (JWT, pinned algorithm) and opaque random tokens stored as hashes."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from authdb.db.models import MAX_ID

_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,18}")
_REQUIRED_CLAIMS = ["sub", "exp", "iat", "jti", "iss", "aud", "sid"]


class InvalidAccessToken(Exception):
    """The token is malformed, forged, expired or for another issuer or audience."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: int


@dataclass(frozen=True, slots=True)
class JWTCodec:
    """Encodes and verifies access tokens with one pinned algorithm."""

    key: str
    algorithm: str
    issuer: str
    audience: str
    lifetime: timedelta

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
        return jwt.encode(claims, self.key, algorithm=self.algorithm)

    def decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": _REQUIRED_CLAIMS},
            )
            return AccessClaims(
                user_id=_id_claim(claims["sub"], text=True),
                session_id=_id_claim(claims["sid"], text=False),
            )
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            raise InvalidAccessToken(str(exc)) from exc


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
