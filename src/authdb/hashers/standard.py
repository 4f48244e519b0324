"""authdb's own formats: argon2 and bcrypt strings, checked before an import stores one.

pwdlib verifies these (authdb.passwords.Hasher); here they are only recognized and checked.
"""

from __future__ import annotations

import re

from authdb.hashers.base import (
    ARGON2_MAX_MEMORY_KIB,
    ARGON2_MAX_PARALLELISM,
    ARGON2_MAX_WORK,
    BCRYPT_MAX_COST,
    BCRYPT_MIN_COST,
    HashFormat,
    decode_base64,
    positive_int,
)

# The PHC string argon2-cffi writes: $argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>.
_ARGON2 = re.compile(
    r"\$argon2(?:id|i|d)\$v=(?P<v>[0-9]+)\$m=(?P<m>[0-9]+),t=(?P<t>[0-9]+),p=(?P<p>[0-9]+)"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)"
)
# bcrypt's modular crypt string: $2b$12$ then 22 characters of salt and 31 of hash, in
# bcrypt's own base64 alphabet.
_BCRYPT = re.compile(
    r"\$2[aby]\$(?P<cost>[0-9][0-9])\$(?P<salt>[./A-Za-z0-9]{22})(?P<hash>[./A-Za-z0-9]{31})"
)
# bcrypt's base64 alphabet, in order: the 22nd salt character carries 2 bits of the 128-bit
# salt (the rest must be 0), the 31st hash character 2 bits of the 184-bit hash.
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def argon2_problem(encoded: str) -> str | None:
    """Why an argon2 PHC string (``$argon2id$v=19$m=..,t=..,p=..$salt$hash``) is unusable."""
    match = _ARGON2.fullmatch(encoded)
    if match is None:
        return "expected $argon2id$v=19$m=...,t=...,p=...$salt$hash"
    if match["v"] not in ("16", "19"):
        return f"unknown version v={match['v']}"
    memory, time, lanes = (positive_int(match[k]) for k in "mtp")
    if lanes is None or not 1 <= lanes <= ARGON2_MAX_PARALLELISM:
        return f"parallelism p must be 1 to {ARGON2_MAX_PARALLELISM}"
    if memory is None or not 8 * lanes <= memory <= ARGON2_MAX_MEMORY_KIB:
        return f"memory m must be 8*p to {ARGON2_MAX_MEMORY_KIB} KiB"
    if time is None or memory * time > ARGON2_MAX_WORK:
        work = memory * (time or 0)
        return f"memory times passes (m*t) must be 1 to {ARGON2_MAX_WORK} (here {work})"
    salt = decode_base64(match["salt"], padded=False)
    digest = decode_base64(match["hash"], padded=False)
    if salt is None or len(salt) < 8:
        return "the salt must be at least 8 bytes of base64"
    if digest is None or len(digest) < 16:
        return "the hash must be at least 16 bytes of base64"
    return None


def bcrypt_problem(encoded: str) -> str | None:
    """Why a bcrypt string (``$2b$12$`` and 53 characters) is unusable, or None."""
    match = _BCRYPT.fullmatch(encoded)
    if match is None:
        return "expected $2b$, two digits of cost, $ and 53 characters of salt and hash"
    if not BCRYPT_MIN_COST <= int(match["cost"]) <= BCRYPT_MAX_COST:
        return f"the cost must be {BCRYPT_MIN_COST} to {BCRYPT_MAX_COST}"
    if (
        _BCRYPT_ALPHABET.index(match["salt"][-1]) % 16
        or _BCRYPT_ALPHABET.index(match["hash"][-1]) % 4
    ):
        return "the salt or hash is not canonical bcrypt base64 (it could never match)"
    return None


class Argon2Format(HashFormat):
    """argon2id (and argon2i, argon2d) PHC strings, verified by pwdlib."""

    name = "argon2"
    prefix = "$argon2"

    def problem(self, hashed: str) -> str | None:
        return argon2_problem(hashed)


class BcryptFormat(HashFormat):
    """bcrypt ``$2a$``/``$2b$``/``$2y$`` strings, verified by pwdlib."""

    name = "bcrypt"
    prefix = "$2"

    def problem(self, hashed: str) -> str | None:
        return bcrypt_problem(hashed)
