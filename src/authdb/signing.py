"""Asymmetric token-signing key pairs: generation, JWK export and RFC 7638 key ids.

authdb signs access tokens with one of three JWS algorithms (RFC 7518, RFC 8037):

- ``RS256``: RSASSA-PKCS1-v1_5 with SHA-256 on a 2048-bit RSA key (RFC 7518 3.3 asks for
  at least 2048 bits);
- ``ES256``: ECDSA on P-256 with SHA-256 (RFC 7518 3.4);
- ``EdDSA``: Ed25519 (RFC 8037 3.1).

A key's ``kid`` is its RFC 7638 JWK thumbprint: derived from the public key alone, so the same
key always has the same id and two keys never share one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Literal, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

Algorithm: TypeAlias = Literal["RS256", "ES256", "EdDSA"]
ASYMMETRIC_ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")
RSA_BITS = 2048

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

# The members RFC 7638 section 3.2 (RSA, EC) and RFC 8037 section 2 (OKP) hash for a thumbprint.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


class UnsupportedAlgorithm(ValueError):
    """Not one of ``RS256``, ``ES256`` or ``EdDSA``."""


def generate(algorithm: str) -> PrivateKey:
    """A new private key for ``algorithm``; raises UnsupportedAlgorithm for any other name."""
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise UnsupportedAlgorithm(f"no key pair for {algorithm!r}: use RS256, ES256 or EdDSA")


def public_jwk(key: PublicKey, algorithm: str) -> dict[str, Any]:
    """The public key as a JWK (RFC 7517) with ``kid`` (its thumbprint), ``alg`` and ``use``."""
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    return {**members, "kid": thumbprint(members), "alg": algorithm, "use": "sig"}


def thumbprint(members: dict[str, Any]) -> str:
    """RFC 7638: base64url(SHA-256(the required members as compact JSON, sorted by name))."""
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def private_bytes(key: PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 DER; seal it before it leaves memory."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private(der: bytes) -> PrivateKey:
    """The private key from ``private_bytes``' output; ValueError if it is not one of ours."""
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ValueError("not an RSA, EC or Ed25519 private key")
    return key


def load_public(jwk: dict[str, Any]) -> PublicKey:
    """The public key of a JWK made by ``public_jwk``; ValueError if it is malformed."""
    kty = jwk.get("kty")
    key: Any
    if kty == "RSA":
        key = RSAAlgorithm.from_jwk(jwk)
    elif kty == "EC":
        key = ECAlgorithm.from_jwk(jwk)
    elif kty == "OKP":
        key = OKPAlgorithm.from_jwk(jwk)
    else:
        raise ValueError(f"unsupported key type {kty!r}")
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError("not a public key")
    return key
