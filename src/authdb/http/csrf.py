"""CSRF tokens for cookie-authenticated requests: signed double-submit (OWASP CSRF cheat sheet).

A token is ``nonce.mac`` with ``mac = HMAC-SHA256(key, binding | nonce)``; the binding is the
browser's session (the SHA-256 of its session cookie) or, before sign-in, of a random HttpOnly
pre-session cookie (``__Host-`` on https). The same token sits in the readable ``authdb_csrf``
cookie and must come back in the ``X-CSRF-Token`` header (API calls) or the ``csrf_token`` form
field (pages). Another site can make a browser send the cookie but can neither read it nor
compute a MAC for the victim's binding, and a token planted from a sibling subdomain is bound
to the attacker's session or pre-session, not the victim's (no login CSRF either).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CSRF_COOKIE = "authdb_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# Methods that change nothing need no token (RFC 9110 9.2.1 safe methods).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_MAX_CHARS = 128


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CSRFTokens:
    """Mints and checks tokens under a key derived (HKDF-SHA256) from the deployment secret."""

    def __init__(self, secret: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"authdb csrf")
        self._key = hkdf.derive(secret.encode())

    def _mac(self, binding: str, nonce: str) -> str:
        message = f"{binding}|{nonce}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def mint(self, binding: str) -> str:
        """A new token for ``binding`` (the hash of a session or pre-session cookie)."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._mac(binding, nonce)}"

    def bound_to(self, token: str | None, binding: str) -> bool:
        """Whether ``token`` was minted by us for ``binding``."""
        if not token or len(token) > _MAX_CHARS or not token.isascii() or "." not in token:
            return False
        nonce, mac = token.split(".", 1)
        return hmac.compare_digest(mac.encode(), self._mac(binding, nonce).encode())

    def check(self, cookie: str | None, presented: str | None, binding: str) -> bool:
        """The double-submit check: the presented token equals the cookie's and is ours for
        ``binding``. Constant-time in the token's content."""
        if not cookie or not presented or not self.bound_to(presented, binding):
            return False
        return hmac.compare_digest(cookie.encode(), presented.encode())
