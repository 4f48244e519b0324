"""Django's password hashers (``django.contrib.auth.hashers``), verify-only.

Django stores ``algorithm$...``; these read the five formats its ``PASSWORD_HASHERS`` setting
has listed by default: ``pbkdf2_sha256`` (the default), ``pbkdf2_sha1``, ``argon2``,
``bcrypt_sha256`` and ``bcrypt``. Hashes are kept exactly as Django wrote them.
"""

from __future__ import annotations

import hashlib
import hmac

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError

from authdb.hashers.base import ForeignHasher, as_bytes, as_text, decode_base64, positive_int
from authdb.hashers.pbkdf2 import PBKDF2Hash, pbkdf2_problem
from authdb.hashers.standard import argon2_problem, bcrypt_problem

# bcrypt reads no more than this many bytes of a password.
_BCRYPT_MAX_BYTES = 72


class _DjangoPBKDF2(ForeignHasher):
    """``pbkdf2_<digest>$<iterations>$<salt>$<base64 hash>``; the salt is used as text."""

    digest = ""

    def _parse(self, encoded: str) -> PBKDF2Hash | str:
        parts = encoded.split("$")
        if len(parts) != 4 or parts[0] != self.prefix.rstrip("$"):
            return f"expected {self.prefix}ITERATIONS$salt$hash"
        _, iterations, salt, key = parts
        if not salt or not all("!" <= char <= "~" for char in salt):
            return "the salt must be printable ASCII"  # Django's are letters and digits
        count = positive_int(iterations)
        key_bytes = decode_base64(key, padded=True)
        problem = pbkdf2_problem(self.digest, count, salt.encode("utf-8"), key_bytes)
        if problem is not None:
            return problem
        assert count is not None and key_bytes is not None
        return PBKDF2Hash(self.digest, count, salt.encode("utf-8"), key_bytes)

    def problem(self, hashed: str) -> str | None:
        parsed = self._parse(hashed)
        return parsed if isinstance(parsed, str) else None

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        parsed = self._parse(as_text(hash))
        return not isinstance(parsed, str) and parsed.matches(as_bytes(password))


class DjangoPBKDF2SHA256(_DjangoPBKDF2):
    """Django's default hasher, ``PBKDF2PasswordHasher``."""

    name = "Django pbkdf2_sha256"
    prefix = "pbkdf2_sha256$"
    digest = "sha256"


class DjangoPBKDF2SHA1(_DjangoPBKDF2):
    """Django's ``PBKDF2SHA1PasswordHasher``."""

    name = "Django pbkdf2_sha1"
    prefix = "pbkdf2_sha1$"
    digest = "sha1"


class DjangoArgon2(ForeignHasher):
    """Django's ``Argon2PasswordHasher``: ``argon2`` followed by argon2-cffi's PHC string."""

    name = "Django argon2"
    prefix = "argon2$argon2"

    def problem(self, hashed: str) -> str | None:
        return argon2_problem(hashed.removeprefix("argon2"))

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        encoded = as_text(hash).removeprefix("argon2")
        if argon2_problem(encoded) is not None:
            return False
        try:
            return PasswordHasher().verify(encoded, as_bytes(password))
        except (Argon2Error, InvalidHashError):
            return False


class DjangoBcryptSHA256(ForeignHasher):
    """Django's ``BCryptSHA256PasswordHasher``: bcrypt of the password's hex SHA-256, so no
    72-byte limit."""

    name = "Django bcrypt_sha256"
    prefix = "bcrypt_sha256$"

    def problem(self, hashed: str) -> str | None:
        return bcrypt_problem(hashed.removeprefix(self.prefix))

    def _secret(self, password: bytes) -> bytes | None:
        return hashlib.sha256(password).hexdigest().encode("ascii")

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        encoded = as_text(hash).removeprefix(self.prefix)
        secret = self._secret(as_bytes(password))
        if secret is None or bcrypt_problem(encoded) is not None:
            return False
        expected = encoded.encode("ascii")
        try:
            return hmac.compare_digest(bcrypt.hashpw(secret, expected), expected)
        except ValueError:
            return False


class DjangoBcrypt(DjangoBcryptSHA256):
    """Django's ``BCryptPasswordHasher``: plain bcrypt. A password over 72 bytes is refused,
    not cut: bcrypt would see only its start, so distinct passwords would match."""

    name = "Django bcrypt"
    prefix = "bcrypt$"

    def _secret(self, password: bytes) -> bytes | None:
        return password if len(password) <= _BCRYPT_MAX_BYTES else None
