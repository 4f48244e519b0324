"""Shared helpers for the signing-key tests: reading the JWKS like a resource server, forging
tokens byte by byte, and scanning the database for private-key material.

A "plain PyJWT client" here knows nothing of authdb: it fetches ``/.well-known/jwks.json``,
picks the key named by the token's ``kid`` and verifies with the algorithm that key declares.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db.models import AUTHDB_TABLES, Base
from tests.conftest import Harness
from tests.mfa_helpers import FrozenClock

KEY_PAIR_ALGORITHMS = ("RS256", "ES256", "EdDSA")
# make_settings' secret, and another one as long.
SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
OTHER_SECRET = "a-different-secret-key-also-long-enough-for-sealing-98765"
ISSUER = AUDIENCE = "authdb"
# Long-lived access tokens, so that a token minted before the clock is moved past a key's
# window is still unexpired by the real clock (which PyJWT checks): a refusal then can only
# come from the key, never from ``exp``.
LONG_LIVED = {"access_token_expire_minutes": 120}
JWKS = "/.well-known/jwks.json"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: object) -> str:
    """A JSON value as one base64url segment of a compact JWS."""
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def compact(header: object, claims: object, sign: Callable[[bytes], bytes] | None) -> str:
    """A compact JWS built by hand (no library checks the header or the key): ``sign`` gets the
    signing input; None leaves the signature empty (``alg: none``)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64url(signature)}"


def hs256_with(secret: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 with any bytes as the secret, even a public key PyJWT would refuse."""
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def header(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


def unverified_claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def jwks(harness: Harness) -> dict[str, Any]:
    response = await harness.client.get(JWKS)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-cache"
    return dict(response.json())


def jwks_kids(document: dict[str, Any]) -> list[str]:
    return [key["kid"] for key in document["keys"]]


def verify_with_jwks(token: str, document: dict[str, Any]) -> dict[str, Any]:
    """What a resource server with PyJWT does: the key the ``kid`` names, its own ``alg``."""
    key = jwt.PyJWKSet.from_dict(document)[header(token)["kid"]]
    return dict(
        jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],
            issuer=ISSUER,
            audience=AUDIENCE,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    )


async def me_status(harness: Harness, token: str) -> int:
    response = await harness.client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
    return response.status_code


def signing_key(harness: Harness) -> Any:
    """The private key this process signs with now (from its key ring)."""
    return harness.auth.core.jwt.keys.signing_key


def frozen_now(harness: Harness) -> FrozenClock:
    """Fix the app's clock at the real now; tests move it forward past key windows."""
    clock = FrozenClock(datetime.now(UTC))
    harness.auth.core.clock = clock
    return clock


async def key_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    """``signing_keys`` rows, oldest first, as plain SQL sees them. ``active``: the key has
    been made current (``activated_at`` set); a published next key is not active yet."""
    query = text(
        "SELECT generation, kid, algorithm, sealed_private_key IS NULL AS erased,"
        " activated_at IS NOT NULL AS active,"
        " rotated_at IS NOT NULL AS rotated, retired_at IS NOT NULL AS retired"
        " FROM signing_keys ORDER BY generation"
    )
    async with engine.connect() as connection:
        return [
            {name: bool(value) if name in _FLAGS else value for name, value in row._mapping.items()}
            for row in await connection.execute(query)
        ]


_FLAGS = {"erased", "active", "rotated", "retired"}


def row(
    generation: int,
    kid: str,
    algorithm: str,
    *,
    erased: bool = False,
    active: bool = False,
    rotated: bool = False,
    retired: bool = False,
) -> dict[str, Any]:
    """A ``key_rows`` row, to compare with."""
    return {
        "generation": generation,
        "kid": kid,
        "algorithm": algorithm,
        "erased": erased,
        "active": active,
        "rotated": rotated,
        "retired": retired,
    }


async def key_states(harness: Harness) -> dict[str, str]:
    """``list_keys`` as ``{kid: state}``."""
    from authdb.services.signing_keys import list_keys

    return {key.kid: key.state for key in await list_keys(harness.auth.core)}


async def next_kid(harness: Harness) -> str:
    """The kid of the published next key (exactly one)."""
    (kid,) = [kid for kid, state in (await key_states(harness)).items() if state == "next"]
    return kid


async def private_key_of(harness: Harness, kid: str) -> Any:
    """The private key of ``kid``, opened from its row with the deployment secret (as only
    authdb itself could): to sign tokens with a key that has not signed anything yet."""
    from authdb import signing
    from authdb.db.models import SigningKey
    from authdb.services.signing_keys import _open_private

    core = harness.auth.core
    async with core.sessionmaker() as db:
        key = await db.scalar(select(SigningKey).where(SigningKey.kid == kid))
    assert key is not None, kid
    return signing.load_private(_open_private(core, key))


async def audit_events(harness: Harness, name: str) -> list[dict[str, Any]]:
    """The ``detail`` of every audit row called ``name``, oldest first."""
    from authdb.services.audit import list_events

    return [
        dict(event.detail or {})
        for event in await list_events(harness.auth.core)
        if event.event == name
    ]


# --- private-key material at rest -----------------------------------------------------------


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def private_key_forms(key: Any) -> list[bytes | str]:
    """Every form of ``key``'s secret a careless store could hold: PKCS#8 DER and PEM (and
    its base64 body lines), traditional DER, and the raw private scalar(s) in bytes, hex
    and base64url (as a JWK ``d`` would carry them)."""
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    body = [line for line in pem.decode().splitlines() if not line.startswith("-----")]
    scalars: list[bytes]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        scalars = [
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        ]
        traditional: list[bytes] = []
    else:
        traditional = [
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        ]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            scalars = [key.private_numbers().private_value.to_bytes(32, "big")]
        else:
            assert isinstance(key, rsa.RSAPrivateKey)
            numbers = key.private_numbers()
            scalars = [_int_bytes(n) for n in (numbers.d, numbers.p, numbers.q)]
    forms: list[bytes | str] = [pkcs8, pem, *traditional, base64.b64encode(pkcs8).decode()]
    forms += body[:-1]  # every full 64-character line of the PEM body
    for scalar in scalars:
        forms += [scalar, scalar.hex(), b64url(scalar), base64.b64encode(scalar).decode()]
    return forms


async def stored_values(engine: AsyncEngine) -> list[object]:
    """Every value of every row of every authdb table, and on PostgreSQL each row as PostgreSQL
    renders it in text (bytea as hex)."""
    values: list[object] = []
    async with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name not in AUTHDB_TABLES:  # an application's model on authdb's Base
                continue
            rows = (await conn.execute(select(table))).all()
            values.extend(value for row in rows for value in row)
            if conn.dialect.name == "postgresql":
                # Table names come from authdb's own metadata, not from input.
                query = text(f'SELECT t::text FROM "{table.name}" AS t')  # noqa: S608
                values.extend((await conn.execute(query)).scalars())
    return values


def sqlite_bytes(engine: AsyncEngine) -> bytes | None:
    """The SQLite database file and its -wal and -journal files, or None on PostgreSQL."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return None
    assert url.database
    path = Path(url.database)
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal")]
    return b"".join(f.read_bytes() for f in files if f.exists())


def _as_bytes(needle: bytes | str) -> bytes:
    return needle if isinstance(needle, bytes) else needle.encode()


async def assert_stored_nowhere(
    engine: AsyncEngine, needles: list[bytes | str], *, visible: str
) -> None:
    """None of ``needles`` is in any row (nor in the SQLite files). ``visible`` is a value known
    to be stored, found first so that a scan that sees nothing cannot pass."""
    values = await stored_values(engine)
    assert any(visible in str(value) for value in values), "the scan does not see the rows"
    for value in values:
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            for needle in needles:
                assert _as_bytes(needle) not in raw
        else:
            rendered = json.dumps(value) if isinstance(value, dict | list) else str(value)
            for needle in needles:
                if isinstance(needle, str):
                    assert needle not in rendered
                    assert needle not in str(value)
    blob = sqlite_bytes(engine)
    if blob is not None:
        assert visible.encode() in blob, "the file scan does not see the rows"
        for needle in needles:
            assert _as_bytes(needle) not in blob


class PlainResourceServer:
    """A resource server with nothing but PyJWT: it fetches the JWKS once, keeps it, and
    fetches it again only for a token whose kid it does not know. ``fetches`` counts them."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0

    def kids(self) -> set[str]:
        return set(jwks_kids(self.document))

    async def verify(self, token: str) -> dict[str, Any]:
        if header(token)["kid"] not in self.kids():
            self.document = await jwks(self._harness)
            self.fetches += 1
        return verify_with_jwks(token, self.document)
