"""Stored password hashes authdb verifies: its own and those of systems users are moved from.

One hasher a format, each with one job (as Django's ``PASSWORD_HASHERS``): recognize its
strings, check their structure and cost at import (``problem``), and verify a password against
one. Every hash but authdb's current argon2id is replaced by one at the first right password
(``authdb.passwords.Hasher``), so foreign formats only ever verify, never hash.

Formats (``hashed_password`` as stored):

- ``$argon2id$v=19$m=...,t=...,p=...$salt$hash`` (and argon2i/argon2d): argon2-cffi's PHC string,
  as pwdlib, fastapi-users and Keycloak's argon2 (converted on import) write it;
- ``$2b$12$...`` (``$2a$``, ``$2y$``): bcrypt, as the tutorial, passlib, fastapi-users and
  Supabase write it;
- Django's ``pbkdf2_sha256$``, ``pbkdf2_sha1$``, ``argon2$argon2id$``, ``bcrypt_sha256$`` and
  ``bcrypt$`` strings, stored as Django wrote them;
- ``$pbkdf2-sha256$i=N$salt$hash`` (``-sha1``, ``-sha512``): PBKDF2 in the PHC string format,
  which Keycloak's credentials are converted to on import (Keycloak keeps salt, hash and
  iterations in separate JSON fields).
"""

from __future__ import annotations

from authdb.hashers.base import MAX_STORED_LENGTH, ForeignHasher, HashFormat
from authdb.hashers.django import (
    DjangoArgon2,
    DjangoBcrypt,
    DjangoBcryptSHA256,
    DjangoPBKDF2SHA1,
    DjangoPBKDF2SHA256,
)
from authdb.hashers.pbkdf2 import PHCPBKDF2, phc_pbkdf2
from authdb.hashers.standard import Argon2Format, BcryptFormat

# Verify-only hashers, tried in order after authdb's own argon2 and bcrypt (pwdlib's).
FOREIGN_HASHERS: tuple[ForeignHasher, ...] = (
    DjangoPBKDF2SHA256(),
    DjangoPBKDF2SHA1(),
    DjangoArgon2(),
    DjangoBcryptSHA256(),
    DjangoBcrypt(),
    PHCPBKDF2(),
)
# Every format a stored hash may have, for checking one before it is stored.
_FORMATS: tuple[HashFormat, ...] = (Argon2Format(), BcryptFormat(), *FOREIGN_HASHERS)


def hash_problem(hashed: str) -> str | None:
    """Why ``hashed`` cannot be stored as a password hash, or None if it can.

    It must be one of the formats above, well formed (a hash that verifies nothing would lock
    its user out for good), and of a cost within bounds: a hash of a billion iterations would
    let anyone who knows the username keep a core busy per login attempt.
    """
    if len(hashed) > MAX_STORED_LENGTH:
        return f"is longer than {MAX_STORED_LENGTH} characters"
    for form in _FORMATS:
        if form.identify(hashed):
            problem = form.problem(hashed)
            return None if problem is None else f"is not a valid {form.name} hash: {problem}"
    return f"is not a supported password hash ({_describe(hashed)})"


# Schemes of other systems' hashes that authdb knows by name but cannot verify. Only these
# are named in an error: the text before a "$" of an unknown value may be a secret (a plain
# password that happens to hold a "$").
_KNOWN_UNSUPPORTED = frozenset({
    "scrypt", "md5", "sha1", "unsalted_md5", "unsalted_sha1", "crypt", "fbscrypt", "1", "5",
    "6", "apr1", "sha256_crypt", "sha512_crypt", "md5_crypt", "pbkdf2", "pbkdf2-sha256",
    "pbkdf2_sha512", "sha512", "sha256", "bcrypt-sha256", "argon2", "scram-sha-256", "ssha",
})  # fmt: skip


def _describe(hashed: str) -> str:
    """What an unsupported hash looks like, without showing it: a known scheme's name."""
    scheme = hashed.split("$", 2)[1] if hashed.startswith("$") else hashed.split("$", 1)[0]
    if "$" in hashed and scheme.lower() in _KNOWN_UNSUPPORTED:
        return f"scheme {scheme!r}; supported: {SUPPORTED}"
    return f"supported: {SUPPORTED}"


SUPPORTED = (
    "argon2, bcrypt, Django's pbkdf2_sha256/pbkdf2_sha1/argon2/bcrypt_sha256/bcrypt, "
    "PBKDF2 in PHC form ($pbkdf2-sha256$...)"
)

__all__ = [
    "FOREIGN_HASHERS",
    "MAX_STORED_LENGTH",
    "SUPPORTED",
    "ForeignHasher",
    "hash_problem",
    "phc_pbkdf2",
]
