"""Secrets at rest: AES-256-GCM under keys derived from the deployment secret.

A sealed value is ``version (1 byte) || nonce (12) || ciphertext+tag``. Each sealing names its
context (the row it belongs to), authenticated as associated data, so a database writer cannot
move a sealed secret from one account to another. Keys are derived with HKDF-SHA256 from
``AUTHDB_SECRET_KEY`` (or the generated key) and a purpose label; values sealed under an
earlier secret stay readable while that secret is listed in ``AUTHDB_SECRET_KEY_FALLBACKS``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12


class Unsealable(ValueError):
    """No configured key opens the value: the secret it was sealed under is gone."""


def derive_key(secret: str, purpose: str) -> bytes:
    """A 256-bit key for one ``purpose``, derived from ``secret`` (HKDF-SHA256, RFC 5869)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
    return hkdf.derive(secret.encode())


def _derive(secret: str, purpose: str) -> AESGCM:
    return AESGCM(derive_key(secret, purpose))


class Sealer:
    """Seals and opens small secrets for one ``purpose`` (e.g. ``"authdb totp secret"``).

    ``secret`` seals; ``secret`` and then each of ``fallbacks`` are tried to open.
    """

    def __init__(self, secret: str, fallbacks: Sequence[str] = (), *, purpose: str) -> None:
        self._current = _derive(secret, purpose)
        self._fallbacks = [_derive(old, purpose) for old in fallbacks if old != secret]

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """``plaintext`` encrypted and bound to ``context``; a fresh random nonce each time."""
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._current.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> tuple[bytes, bool]:
        """``(plaintext, stale)``: ``stale`` when a fallback key opened it (seal it again).

        Raises Unsealable when the value is malformed, bound to another context, or sealed
        under a secret that is no longer configured.
        """
        if len(sealed) <= 1 + _NONCE_BYTES or sealed[:1] != _VERSION:
            raise Unsealable("not a sealed value")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        for index, aead in enumerate([self._current, *self._fallbacks]):
            try:
                return aead.decrypt(nonce, body, context.encode()), index > 0
            except InvalidTag:
                continue
        raise Unsealable("sealed under a secret key that is no longer configured")
