"""JWTCodec remembers the access tokens it verified: the signature is checked once per token,
expiry on every use, and nothing carries over to another key set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from authdb import tokens
from authdb.tokens import AccessClaims, InvalidAccessToken, JWTCodec, KeySet, VerificationKey

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def _codec(clock: Clock | None = None, secret: str = SECRET) -> JWTCodec:
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return JWTCodec(
        keys=KeySet.hmac(secret, "HS256"),
        issuer="authdb",
        audience="authdb",
        lifetime=timedelta(minutes=30),
        **extra,
    )


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT verifies meanwhile."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(tokens.jwt, "decode", counting)
    return seen


def test_a_token_is_verified_once_then_remembered(verifications: list[str]) -> None:
    codec = _codec()
    token = codec.encode(user_id=7, session_id=9, now=datetime.now(UTC))
    for _ in range(5):
        assert codec.decode(token) == AccessClaims(user_id=7, session_id=9)
    assert verifications == [token]


def test_a_remembered_token_is_refused_once_it_expires(verifications: list[str]) -> None:
    clock = Clock()
    codec = _codec(clock)
    token = codec.encode(user_id=7, session_id=9, now=datetime.now(UTC))
    assert codec.decode(token).user_id == 7
    clock.now += 30 * 60 - 1
    assert codec.decode(token).user_id == 7
    clock.now += 1  # exp itself: expired, as PyJWT has it
    with pytest.raises(InvalidAccessToken):
        codec.decode(token)
    with pytest.raises(InvalidAccessToken):
        codec.decode(token)
    assert len(verifications) == 2  # forgotten when it expired, then refused by PyJWT's check


def test_tokens_that_fail_are_not_remembered(verifications: list[str]) -> None:
    codec = _codec()
    good = codec.encode(user_id=7, session_id=9, now=datetime.now(UTC))
    forged = _codec(secret="another-secret-that-is-long-enough-for-hs256-0123456789ab").encode(
        user_id=7, session_id=9, now=datetime.now(UTC)
    )
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    for bad in (forged, tampered, forged):
        with pytest.raises(InvalidAccessToken):
            codec.decode(bad)
    assert verifications == [forged, tampered, forged]


def test_another_key_set_verifies_afresh(verifications: list[str]) -> None:
    """The key ring installs a new codec when the keys change: what the old one verified is
    not taken as verified under the new keys."""
    old = _codec()
    token = old.encode(user_id=7, session_id=9, now=datetime.now(UTC))
    old.decode(token)
    rotated = _codec(secret="a-rotated-secret-that-is-long-enough-for-hs256-0123456789")
    with pytest.raises(InvalidAccessToken):
        rotated.decode(token)
    assert verifications == [token, token]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=60))
def test_memory_is_bounded_and_answers_never_change(picks: list[int]) -> None:
    """Whatever the order of tokens, each decodes to its own ids and the memory stays within
    its bound (here shrunk to 8)."""
    codec = _codec()
    now = datetime.now(UTC)
    minted = [codec.encode(user_id=i + 1, session_id=i + 100, now=now) for i in range(31)]
    original = tokens.MAX_VERIFIED_TOKENS
    tokens.MAX_VERIFIED_TOKENS = 8
    try:
        for i in picks:
            assert codec.decode(minted[i]) == AccessClaims(user_id=i + 1, session_id=i + 100)
            assert len(codec.verified) <= 8
    finally:
        tokens.MAX_VERIFIED_TOKENS = original


def _pair_set(*kids: str, signing: str) -> KeySet:
    private = {kid: ed25519.Ed25519PrivateKey.generate() for kid in kids}
    return KeySet(
        signing_algorithm="EdDSA",
        signing_key=private[signing],
        signing_kid=signing,
        verifying={kid: VerificationKey("EdDSA", key.public_key()) for kid, key in private.items()},
    )


def test_only_key_sets_that_verify_alike_share_what_was_verified() -> None:
    """The key ring re-reads the keys every few seconds; a set with the same kids (RFC 7638
    thumbprints) and algorithms keeps the verified tokens, any other change does not."""
    base = _pair_set("k1", "k2", signing="k1")
    assert base.verifies_as(_pair_set("k1", "k2", signing="k2"))  # a rotation to a known key
    assert not base.verifies_as(_pair_set("k1", signing="k1"))  # k2 retired
    assert not base.verifies_as(_pair_set("k1", "k2", "k3", signing="k1"))  # k3 added
    hmac = KeySet.hmac(SECRET, "HS256")
    assert not hmac.verifies_as(hmac)  # nothing names an HMAC secret: never carried over
