"""PBKDF2 (RFC 8018) hashes in the PHC string format: ``$pbkdf2-sha256$i=27500$salt$hash``.

Keycloak keeps a credential's salt, hash and iteration count in separate JSON fields; the import
joins them into this one string (``phc_pbkdf2``), the form passlib and the PHC string format
give PBKDF2. Salt and hash are unpadded standard base64, the derived key's length is the hash's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from authdb.hashers.base import (
    PBKDF2_MAX_KEY_BYTES,
    PBKDF2_MAX_WORK,
    ForeignHasher,
    as_bytes,
    as_text,
    decode_base64,
    encode_base64,
    positive_int,
)

# Each PBKDF2 output block of a digest's size costs the full iteration count.
DIGEST_BYTES = {"sha1": 20, "sha256": 32, "sha512": 64}
DIGESTS = tuple(DIGEST_BYTES)
_PHC = re.compile(
    r"\$pbkdf2-(?P<digest>sha1|sha256|sha512)\$i=(?P<i>\d+)"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)"
)


@dataclass(frozen=True, slots=True)
class PBKDF2Hash:
    """A parsed PBKDF2 hash: HMAC digest name, iterations, salt and derived key."""

    digest: str
    iterations: int
    salt: bytes
    key: bytes

    def matches(self, password: bytes) -> bool:
        """Derive a key of the stored key's length from ``password``; compare in constant time."""
        derived = hashlib.pbkdf2_hmac(
            self.digest, password, self.salt, self.iterations, dklen=len(self.key)
        )
        return hmac.compare_digest(derived, self.key)


def pbkdf2_problem(
    digest: str, iterations: int | None, salt: bytes | None, key: bytes | None
) -> str | None:
    """Why these PBKDF2 parameters are unusable, or None."""
    if digest not in DIGESTS:
        return f"unknown digest {digest!r} (expected one of {', '.join(DIGESTS)})"
    if iterations is None or iterations < 1:
        return "iterations must be a positive number"
    if not salt:
        return "the salt is missing or not base64"
    if key is None or not 16 <= len(key) <= PBKDF2_MAX_KEY_BYTES:
        return f"the hash must be 16 to {PBKDF2_MAX_KEY_BYTES} bytes of base64"
    work = iterations * -(-len(key) // DIGEST_BYTES[digest])
    if work > PBKDF2_MAX_WORK:
        return f"iterations times output blocks must be at most {PBKDF2_MAX_WORK:,} (here {work:,})"
    return None


def phc_pbkdf2(digest: str, iterations: int, salt: bytes, key: bytes) -> str:
    """The PHC string of a PBKDF2 hash (``$pbkdf2-sha512$i=210000$<salt>$<hash>``)."""
    return f"$pbkdf2-{digest}$i={iterations}${encode_base64(salt)}${encode_base64(key)}"


def parse_phc(encoded: str) -> PBKDF2Hash | str:
    """The parsed hash, or why ``encoded`` is not a usable PHC PBKDF2 string."""
    match = _PHC.fullmatch(encoded)
    if match is None:
        return "expected $pbkdf2-sha256$i=ITERATIONS$salt$hash (unpadded base64)"
    iterations = positive_int(match["i"])
    salt = decode_base64(match["salt"], padded=False)
    key = decode_base64(match["hash"], padded=False)
    problem = pbkdf2_problem(match["digest"], iterations, salt, key)
    if problem is not None:
        return problem
    assert iterations is not None and salt is not None and key is not None
    return PBKDF2Hash(match["digest"], iterations, salt, key)


class PHCPBKDF2(ForeignHasher):
    """``$pbkdf2-sha1$``, ``$pbkdf2-sha256$``, ``$pbkdf2-sha512$``: Keycloak's PBKDF2 credentials
    (Java's ``PBKDF2WithHmacSHA*``, which encodes the password as UTF-8)."""

    name = "PBKDF2"
    prefix = "$pbkdf2-"

    def problem(self, hashed: str) -> str | None:
        parsed = parse_phc(hashed)
        return parsed if isinstance(parsed, str) else None

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        parsed = parse_phc(as_text(hash))
        return not isinstance(parsed, str) and parsed.matches(as_bytes(password))
