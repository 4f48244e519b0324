"""Micro-benchmark: what one access token costs to sign and to verify, per JWT algorithm.

Uses authdb's own ``JWTCodec`` and ``KeySet``, with keys built the way a running process
builds them (``authdb.services.signing_keys._load``): the private key through a PKCS#8 round
trip, the public key loaded back from its JWK, the ``kid`` in the header. For each of
``HS256``, ``RS256``, ``ES256`` and ``EdDSA`` it times, per token:

* ``sign``: ``JWTCodec.encode`` (claims, JSON, base64url, signature), what ``POST /token`` pays;
* ``verify``: ``JWTCodec.decode`` (kid lookup, ``jwt.decode`` with every claim check, the id
  checks), what every authenticated request pays;
* ``jwt.decode``: PyJWT alone with the key already chosen, so ``verify`` minus this is
  authdb's own overhead;
* ``kid lookup``: ``JWTCodec._verification_key`` alone, the part of that overhead that picks the
  key (under a key pair: ``jwt.get_unverified_header``, which parses and checks the whole token,
  not just its header, before ``jwt.decode`` does it again);
* ``raw sign`` / ``raw verify``: the bare primitive (``hmac`` or ``cryptography``) on the same
  signing input: the floor that no JWT library can go under.

Each figure is the median over ``--repeat`` batches of process CPU time (``time.process_time``)
and wall time (``time.perf_counter``) per operation; a batch runs about ``--seconds``. Wall much
above CPU means the process was waiting for a core (pin it, see below). Usage::

    taskset -c 1 .venv/bin/python bench/bench_signing.py [--seconds 0.25] [--repeat 5]
        [--algorithms HS256,RS256,ES256,EdDSA]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cryptography
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from authdb import signing
from authdb.tokens import JWTCodec, KeySet, VerificationKey

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
REQUIRED_CLAIMS = ["sub", "exp", "iat", "jti", "iss", "aud", "sid"]
ISSUER = AUDIENCE = "authdb"


@dataclass(frozen=True)
class Timing:
    """Per-operation medians (and the best batch's CPU) in microseconds."""

    cpu_us: float
    wall_us: float
    best_cpu_us: float
    batches: int
    per_batch: int


def timed(fn: Callable[[], object], seconds: float, repeat: int) -> Timing:
    """Run ``fn`` in ``repeat`` batches of about ``seconds`` each (after a calibration)."""
    n, spent = 1, 0.0
    while spent < 0.02:  # calibrate: how many calls take ~20 ms
        n *= 2
        begun = time.perf_counter()
        for _ in range(n):
            fn()
        spent = time.perf_counter() - begun
    per_batch = max(10, int(n * seconds / spent))
    cpu, wall = [], []
    for _ in range(repeat):
        cpu_begun, wall_begun = time.process_time(), time.perf_counter()
        for _ in range(per_batch):
            fn()
        wall.append((time.perf_counter() - wall_begun) / per_batch * 1e6)
        cpu.append((time.process_time() - cpu_begun) / per_batch * 1e6)
    return Timing(statistics.median(cpu), statistics.median(wall), min(cpu), repeat, per_batch)


def key_set(algorithm: str) -> tuple[KeySet, Any]:
    """The key set a process would hold for ``algorithm``, and the verification key."""
    if algorithm.startswith("HS"):
        secret = secrets.token_urlsafe(48)
        return KeySet.hmac(secret, algorithm), secret
    private = signing.load_private(signing.private_bytes(signing.generate(algorithm)))
    jwk = signing.public_jwk(private.public_key(), algorithm)
    public = signing.load_public(jwk)
    keys = KeySet(
        signing_algorithm=algorithm,
        signing_key=private,
        signing_kid=jwk["kid"],
        verifying={jwk["kid"]: VerificationKey(algorithm, public)},
        jwks=(jwk,),
    )
    return keys, public


def raw_primitives(
    algorithm: str, keys: KeySet, public: Any, message: bytes
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(sign, verify) of the bare primitive on ``message``, as PyJWT calls it."""
    key = keys.signing_key
    if algorithm == "HS256":
        secret = key.encode()
        mac = hmac.new(secret, message, hashlib.sha256).digest()
        return (
            lambda: hmac.new(secret, message, hashlib.sha256).digest(),
            lambda: hmac.compare_digest(mac, hmac.new(secret, message, hashlib.sha256).digest()),
        )
    if algorithm == "RS256":
        assert isinstance(key, rsa.RSAPrivateKey)
        pad, sha = padding.PKCS1v15(), hashes.SHA256()
        sig = key.sign(message, pad, sha)
        return lambda: key.sign(message, pad, sha), lambda: public.verify(sig, message, pad, sha)
    if algorithm == "ES256":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ecdsa = ec.ECDSA(hashes.SHA256())
        sig = key.sign(message, ecdsa)
        return lambda: key.sign(message, ecdsa), lambda: public.verify(sig, message, ecdsa)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    sig = key.sign(message)
    return lambda: key.sign(message), lambda: public.verify(sig, message)


def bench_algorithm(algorithm: str, seconds: float, repeat: int) -> dict[str, Any]:
    keys, public = key_set(algorithm)
    codec = JWTCodec(keys=keys, issuer=ISSUER, audience=AUDIENCE, lifetime=timedelta(minutes=30))
    now = datetime.now(UTC)
    token = codec.encode(user_id=123456, session_id=654321, now=now)
    claims = codec.decode(token)
    assert (claims.user_id, claims.session_id) == (123456, 654321)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == algorithm, header

    def pyjwt_decode() -> object:
        return jwt.decode(
            token,
            public,
            algorithms=[algorithm],
            issuer=ISSUER,
            audience=AUDIENCE,
            options={"require": REQUIRED_CLAIMS},
        )

    signing_input = token.rsplit(".", 1)[0].encode()
    raw_sign, raw_verify = raw_primitives(algorithm, keys, public, signing_input)
    signature = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    return {
        "algorithm": algorithm,
        "token_bytes": len(token),
        "signature_bytes": len(signature),
        "sign": timed(
            lambda: codec.encode(user_id=123456, session_id=654321, now=now), seconds, repeat
        ),
        "verify": timed(lambda: codec.decode(token), seconds, repeat),
        "jwt.decode": timed(pyjwt_decode, seconds, repeat),
        "kid lookup": timed(lambda: codec._verification_key(token), seconds, repeat),
        "raw sign": timed(raw_sign, seconds, repeat),
        "raw verify": timed(raw_verify, seconds, repeat),
    }


def describe_machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = sorted(os.sched_getaffinity(0))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({model}), pinned to "
        f"CPU {','.join(map(str, affinity))}; Python {platform.python_version()}, PyJWT "
        f"{jwt.__version__}, cryptography {cryptography.__version__} "
        f"({_openssl_version()}); load average before the run {load}"
    )


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


COLUMNS = ("sign", "verify", "jwt.decode", "kid lookup", "raw sign", "raw verify")


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"authdb access-token signing micro-benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"median of {args.repeat} batches of ~{args.seconds:g} s each"
    )
    print(describe_machine())
    print("µs of process CPU per token (wall µs in brackets when it differs by more than 10%)")
    header = f"{'':7} {'token B':>7}" + "".join(f"{name:>16}" for name in COLUMNS)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for name in COLUMNS:
            t: Timing = row[name]
            cell = f"{t.cpu_us:.1f}"
            if abs(t.wall_us - t.cpu_us) > 0.1 * t.cpu_us:
                cell += f" [{t.wall_us:.1f}]"
            cells.append(f"{cell:>16}")
        print(f"{row['algorithm']:7} {row['token_bytes']:>7}" + "".join(cells))
    print()
    print("per core and second (1 / CPU per token), and authdb's overhead over the primitive:")
    print(
        f"{'':7} {'signs/s':>10} {'verifies/s':>11} {'sign - raw':>11} {'verify - raw':>13} "
        f"{'verify - jwt.decode':>20}"
    )
    for row in rows:
        sign, verify, decode = row["sign"], row["verify"], row["jwt.decode"]
        print(
            f"{row['algorithm']:7} {1e6 / sign.cpu_us:>10.0f} {1e6 / verify.cpu_us:>11.0f} "
            f"{sign.cpu_us - row['raw sign'].cpu_us:>11.1f} "
            f"{verify.cpu_us - row['raw verify'].cpu_us:>13.1f} "
            f"{verify.cpu_us - decode.cpu_us:>20.1f}"
        )
    print(
        "(sign/verify: authdb JWTCodec.encode/decode; jwt.decode: PyJWT with the key already "
        "chosen;\n kid lookup: JWTCodec._verification_key; raw: hmac / cryptography on the signing "
        "input)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Per-token JWT sign and verify cost in authdb.")
    parser.add_argument("--seconds", type=float, default=0.25, help="seconds per batch")
    parser.add_argument("--repeat", type=int, default=5, help="batches per figure (median)")
    parser.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help=f"comma-separated, from {', '.join(ALGORITHMS)}",
    )
    args = parser.parse_args(argv)
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = set(args.algorithms) - set(ALGORITHMS)
    if unknown:
        parser.error(f"unknown algorithm(s): {', '.join(sorted(unknown))}")
    if args.seconds <= 0 or args.repeat <= 0:
        parser.error("--seconds and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for algorithm in args.algorithms:
        print(f"  {algorithm} ...", flush=True)
        rows.append(bench_algorithm(algorithm, args.seconds, args.repeat))
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
