"""Access tokens (JWT, pinned algorithm) and opaque random tokens stored as hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

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
            sid = claims["sid"]
            if not isinstance(sid, int) or isinstance(sid, bool):
                raise InvalidAccessToken("sid must be an integer")
            return AccessClaims(
                user_id=int(claims["sub"]),
                session_id=sid,
            )
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            raise InvalidAccessToken(str(exc)) from exc


def new_opaque_token() -> str:
    """256 bits of randomness, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_opaque_token(token: str) -> str:
    """What is stored instead of the token. A fast hash is right for 256-bit random values."""
    return hashlib.sha256(token.encode()).hexdigest()
