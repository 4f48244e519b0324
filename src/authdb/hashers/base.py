"""What every stored-hash format provides, and the bounds an imported hash must keep."""

from __future__ import annotations

import base64
import binascii
import re
from abc import ABC, abstractmethod

# The ``users.hashed_password`` column's size.
MAX_STORED_LENGTH = 255
# Work bounds for hashes brought in. A stored hash sets what one login attempt costs, and
# anyone who knows the username can make attempts, all queued behind the hash concurrency
# limit: above these, one attempt would hold a core for seconds or a share of RAM. The bounds
# are on the total work (PBKDF2: iterations times output blocks; argon2: memory times passes),
# each well above its system's default: Django 6.0 uses 1,200,000 PBKDF2-SHA256 iterations
# and one block, Keycloak 210,000 of SHA-512; argon2-cffi m=65536,t=3, Django m=102400,t=2;
# bcrypt's usual cost is 10-12.
PBKDF2_MAX_WORK = 3_000_000
PBKDF2_MAX_KEY_BYTES = 64
BCRYPT_MIN_COST, BCRYPT_MAX_COST = 4, 14
ARGON2_MAX_MEMORY_KIB = 256 * 1024
ARGON2_MAX_WORK = 512 * 1024  # memory (KiB) times passes
ARGON2_MAX_PARALLELISM = 16

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class HashFormat(ABC):
    """One stored-hash format: recognizing its strings and checking one before it is stored."""

    #: How error messages name the format ("Django pbkdf2_sha256").
    name: str = ""
    #: The start of every string of this format.
    prefix: str = ""

    @classmethod
    def identify(cls, hash: str | bytes) -> bool:
        """True if ``hash`` claims this format (it may still be malformed: see ``problem``)."""
        text = hash.decode("ascii", "replace") if isinstance(hash, bytes) else hash
        return text.startswith(cls.prefix)

    @abstractmethod
    def problem(self, hashed: str) -> str | None:
        """Why ``hashed`` (which ``identify`` accepted) is malformed or too costly, or None."""


class ForeignHasher(HashFormat):
    """A verify-only pwdlib hasher: a right password is then re-hashed with argon2id."""

    @abstractmethod
    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        """True if ``password`` gives ``hash``; False for a wrong password or a malformed hash.

        Compares in constant time (``hmac.compare_digest`` or the library's own check).
        """

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        """Never called: pwdlib hashes with its current hasher, authdb's argon2id."""
        raise NotImplementedError(f"{self.name} hashes are verified only, never made")

    def check_needs_rehash(self, hash: str | bytes) -> bool:
        """Always: a foreign hash is replaced at the first right password."""
        return True


def as_text(value: str | bytes) -> str:
    """``value`` as text (pwdlib passes either)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def as_bytes(value: str | bytes) -> bytes:
    """``value`` as UTF-8 bytes (pwdlib passes either)."""
    return value.encode("utf-8") if isinstance(value, str) else value


def decode_base64(text: str, *, padded: bool) -> bytes | None:
    """Standard base64 (RFC 4648 section 4) to bytes; None if it is not that, or not in its
    one canonical spelling (unused low bits set: a hash that would never compare equal).

    ``padded=False`` takes the PHC string format's unpadded form.
    """
    if not _BASE64.fullmatch(text) or (not padded and "=" in text):
        return None
    try:
        data = base64.b64decode(text if padded else text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    canonical = base64.b64encode(data).decode("ascii")
    return data if (canonical if padded else canonical.rstrip("=")) == text else None


def encode_base64(data: bytes) -> str:
    """Unpadded standard base64, as the PHC string format writes salts and hashes."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def positive_int(text: str) -> int | None:
    """A decimal count of ASCII digits without sign or leading zero ("27500"), or None."""
    if not text.isascii() or not text.isdigit() or text.startswith("0") or len(text) > 10:
        return None
    return int(text)
