"""Secrets sealed at rest (``authdb.sealing``) and what a change of ``AUTHDB_SECRET_KEY`` does to
the TOTP secrets sealed under the old one, with the real app on both databases.

Unit part: round trip, context and purpose binding, tampering, fallback keys. End to end: a
user's authenticator survives a key rotation while the old key is a fallback (and is re-sealed
under the new key on first use), is refused with 401 (never 500) without it until an
administrator resets MFA, and survives the switch from the generated key to a configured one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from authdb.db.models import Meta
from authdb.sealing import Sealer, Unsealable
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]

OLD = "old-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
NEW = "new-secret-key-9876543210-zyxwvutsrqponmlkjihgfedcba"
PURPOSE = "test purpose"
MFA_GRANT = "urn:authdb:params:oauth:grant-type:mfa"


# --- the Sealer ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512), st.text(max_size=64))
def test_round_trip(plaintext: bytes, context: str) -> None:
    sealer = Sealer(OLD, purpose=PURPOSE)
    sealed = sealer.seal(plaintext, context)
    assert sealer.open(sealed, context) == (plaintext, False)
    # A fresh instance with the same secret (another worker, a restart) opens it too.
    assert Sealer(OLD, purpose=PURPOSE).open(sealed, context) == (plaintext, False)


def test_each_sealing_is_different() -> None:
    sealer = Sealer(OLD, purpose=PURPOSE)
    sealed = {sealer.seal(b"JBSWY3DPEHPK3PXP", "mfa_totp:1") for _ in range(20)}
    assert len(sealed) == 20  # a fresh nonce each time: equal secrets do not show as equal
    assert not any(b"JBSWY3DP" in value for value in sealed)


@pytest.mark.parametrize("other", ["mfa_totp:2", "mfa_totp:1 ", "MFA_TOTP:1", ""])
def test_a_value_opens_only_in_its_own_context(other: str) -> None:
    sealer = Sealer(OLD, purpose=PURPOSE)
    sealed = sealer.seal(b"secret", "mfa_totp:1")
    with pytest.raises(Unsealable):
        sealer.open(sealed, other)


def test_a_value_opens_only_for_its_own_purpose() -> None:
    sealed = Sealer(OLD, purpose="authdb totp secret").seal(b"secret", "ctx")
    with pytest.raises(Unsealable):
        Sealer(OLD, purpose="authdb signing key").open(sealed, "ctx")


def test_tampering_with_any_byte_is_detected() -> None:
    sealer = Sealer(OLD, purpose=PURPOSE)
    sealed = sealer.seal(b"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "ctx")
    for index in range(len(sealed)):
        for flip in (0x01, 0x80, 0xFF):
            tampered = bytearray(sealed)
            tampered[index] ^= flip
            with pytest.raises(Unsealable):
                sealer.open(bytes(tampered), "ctx")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sealed: b"",
        lambda sealed: sealed[:1],
        lambda sealed: sealed[:13],
        lambda sealed: sealed[:-1],
        lambda sealed: sealed + b"\x00",
        lambda sealed: b"\x02" + sealed[1:],
        lambda sealed: sealed[1:],
        lambda sealed: b"\x00" * len(sealed),
    ],
    ids=["empty", "version", "no-body", "truncated", "extended", "version-2", "shifted", "zeros"],
)
def test_malformed_values_are_unsealable(mangle: Callable[[bytes], bytes]) -> None:
    sealer = Sealer(OLD, purpose=PURPOSE)
    with pytest.raises(Unsealable):
        sealer.open(mangle(sealer.seal(b"secret", "ctx")), "ctx")


def test_a_fallback_opens_what_the_old_secret_sealed_and_says_it_is_stale() -> None:
    sealed = Sealer(OLD, purpose=PURPOSE).seal(b"secret", "ctx")
    rotated = Sealer(NEW, [OLD], purpose=PURPOSE)
    assert rotated.open(sealed, "ctx") == (b"secret", True)
    resealed = rotated.seal(b"secret", "ctx")  # what the caller does with a stale value
    assert rotated.open(resealed, "ctx") == (b"secret", False)
    assert Sealer(NEW, purpose=PURPOSE).open(resealed, "ctx") == (b"secret", False)
    with pytest.raises(Unsealable):
        Sealer(OLD, purpose=PURPOSE).open(resealed, "ctx")  # sealed under the new key only


def test_without_the_fallback_the_old_value_is_unsealable() -> None:
    sealed = Sealer(OLD, purpose=PURPOSE).seal(b"secret", "ctx")
    with pytest.raises(Unsealable):
        Sealer(NEW, purpose=PURPOSE).open(sealed, "ctx")
    with pytest.raises(Unsealable):
        Sealer(NEW, ["some-other-old-key-0123456789abcdef"], purpose=PURPOSE).open(sealed, "ctx")
    # The fallbacks are tried in turn; the context still binds under a fallback.
    several = Sealer(NEW, ["another-old-key-0123456789abcdefgh", OLD], purpose=PURPOSE)
    assert several.open(sealed, "ctx") == (b"secret", True)
    with pytest.raises(Unsealable):
        several.open(sealed, "other")


def test_the_current_secret_listed_as_a_fallback_is_not_stale() -> None:
    sealer = Sealer(NEW, [NEW, OLD], purpose=PURPOSE)
    assert sealer.open(sealer.seal(b"secret", "ctx"), "ctx") == (b"secret", False)


# --- the real app across a change of secret key ------------------------------------------------


class Clock:
    """``core.clock`` for every harness of a test: a fixed instant the test moves on.

    It lies 15 minutes in the past, so access tokens issued at it are not "issued in the future"
    by the real clock PyJWT checks them against.
    """

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=15)

    def __call__(self) -> datetime:
        return self.now

    def next_step(self) -> datetime:
        """Move on one TOTP step (each accepted code spends its step)."""
        self.now += timedelta(seconds=30)
        return self.now


async def _started(make_harness: MakeHarness, clock: Clock, **settings: object) -> Harness:
    harness = await make_harness(**settings)
    harness.auth.core.clock = clock
    return harness


async def _enable_mfa(
    harness: Harness, clock: Clock, username: str = "alice"
) -> tuple[str, list[str]]:
    """Set up and confirm TOTP for ``username``; returns the secret and the recovery codes."""
    headers = await harness.bearer(username)
    setup = await harness.client.post(
        "/users/me/mfa/totp/setup", json={"password": PASSWORD}, headers=headers
    )
    assert setup.status_code == 200, setup.text
    secret = str(setup.json()["secret"])
    confirm = await harness.client.post(
        "/users/me/mfa/totp/confirm",
        json={"code": pyotp.TOTP(secret).at(clock.now)},
        headers=headers,
    )
    assert confirm.status_code == 200, confirm.text
    return secret, list(confirm.json()["recovery_codes"])


async def _mfa_token(harness: Harness, username: str = "alice") -> str:
    response = await harness.client.post(
        "/token", data={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == "MFA required"
    return str(response.json()["mfa_token"])


async def _sign_in_with_code(
    harness: Harness, secret: str, clock: Clock
) -> tuple[int, dict[str, Any]]:
    """Password, then the code of a fresh step: the status and body of the MFA grant."""
    token = await _mfa_token(harness)
    code = pyotp.TOTP(secret).at(clock.next_step())
    response = await harness.client.post(
        "/token", data={"grant_type": MFA_GRANT, "mfa_token": token, "otp": code}
    )
    return response.status_code, response.json()


async def _sealed(harness: Harness, username: str = "alice") -> bytes:
    async with harness.auth.core.engine.connect() as connection:
        value = await connection.scalar(
            text(
                "SELECT t.sealed_secret FROM mfa_totp t JOIN users u ON u.id = t.user_id"
                " WHERE u.username = :name"
            ),
            {"name": username},
        )
    assert value is not None
    return bytes(value)


async def _works(harness: Harness, tokens: dict[str, Any]) -> None:
    me = await harness.client.get(
        "/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice" and me.json()["mfa_enabled"] is True


async def test_a_rotated_key_with_the_old_one_as_fallback_keeps_mfa_and_reseals(
    make_harness: MakeHarness,
) -> None:
    clock = Clock()
    first = await _started(make_harness, clock, secret_key=OLD)
    await first.create_user()
    secret, _ = await _enable_mfa(first, clock)
    sealed_under_old = await _sealed(first)
    assert secret.encode() not in sealed_under_old

    rotated = await _started(make_harness, clock, secret_key=NEW, secret_key_fallbacks=OLD)
    assert rotated.auth.settings.secret_key_fallbacks[0].get_secret_value() == OLD
    status, body = await _sign_in_with_code(rotated, secret, clock)
    assert status == 200, body
    await _works(rotated, body)
    resealed = await _sealed(rotated)
    assert resealed != sealed_under_old

    # Once re-sealed, the new key alone opens it: the fallback can go.
    alone = await _started(make_harness, clock, secret_key=NEW)
    assert alone.auth.core.secret_fallbacks == ()
    status, body = await _sign_in_with_code(alone, secret, clock)
    assert status == 200, body
    await _works(alone, body)
    assert await _sealed(alone) == resealed  # opened with the current key: nothing to re-seal


async def test_a_rotated_key_without_fallback_refuses_the_code_until_an_admin_resets(
    make_harness: MakeHarness,
) -> None:
    clock = Clock()
    first = await _started(make_harness, clock, secret_key=OLD)
    await first.create_user("root", is_superuser=True)
    alice = await first.create_user()
    secret, codes = await _enable_mfa(first, clock)
    sealed_under_old = await _sealed(first)

    rotated = await _started(make_harness, clock, secret_key=NEW)
    # The right code of the right step, but nothing can open the secret: a 401, never a 500.
    status, body = await _sign_in_with_code(rotated, secret, clock)
    assert status == 401, body
    assert body["detail"] == "Invalid MFA code"
    assert body["error"] == "invalid_grant"
    assert await _sealed(rotated) == sealed_under_old  # left as it was for a fallback to open
    # Recovery codes are HMACs under a key derived from the secret key: refused as well.
    recovery = await rotated.client.post(
        "/token",
        data={
            "grant_type": MFA_GRANT,
            "mfa_token": await _mfa_token(rotated),
            "recovery_code": codes[0],
        },
    )
    assert recovery.status_code == 401, recovery.text
    assert recovery.json()["detail"] == "Invalid MFA code"
    # With the old key as a fallback, the same recovery code works.
    fallback = await _started(make_harness, clock, secret_key=NEW, secret_key_fallbacks=OLD)
    recovery = await fallback.client.post(
        "/token",
        data={
            "grant_type": MFA_GRANT,
            "mfa_token": await _mfa_token(fallback),
            "recovery_code": codes[0],
        },
    )
    assert recovery.status_code == 200, recovery.text
    # Without the old key, the administrator's reset is the way back.
    admin = await rotated.bearer("root")
    reset = await rotated.client.delete(f"/users/{alice.id}/mfa", headers=admin)
    assert reset.status_code == 204, reset.text
    tokens = await rotated.login()  # the password alone again
    me = await rotated.client.get(
        "/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.json()["mfa_enabled"] is False
    # And MFA can be set up again under the new key.
    clock.next_step()
    again, _ = await _enable_mfa(rotated, clock)
    status, body = await _sign_in_with_code(rotated, again, clock)
    assert status == 200, body


async def test_the_generated_key_stays_a_fallback_once_a_secret_key_is_set(
    make_harness: MakeHarness,
) -> None:
    clock = Clock()
    generated = await _started(make_harness, clock, secret_key=None)
    async with generated.auth.core.sessionmaker() as db:
        stored = await db.scalar(select(Meta.value).where(Meta.key == "secret_key"))
    assert stored is not None and generated.auth.core.secret == stored
    await generated.create_user()
    secret, _ = await _enable_mfa(generated, clock)
    sealed_under_generated = await _sealed(generated)

    configured = await _started(make_harness, clock, secret_key=NEW)
    assert configured.auth.core.secret == NEW
    assert stored in configured.auth.core.secret_fallbacks
    status, body = await _sign_in_with_code(configured, secret, clock)
    assert status == 200, body
    await _works(configured, body)
    assert await _sealed(configured) != sealed_under_generated  # now under the configured key


async def test_old_access_tokens_die_with_the_old_key(make_harness: MakeHarness) -> None:
    clock = Clock()
    first = await _started(make_harness, clock, secret_key=OLD)
    await first.create_user()
    headers = await first.bearer()
    rotated = await _started(make_harness, clock, secret_key=NEW, secret_key_fallbacks=OLD)
    # The fallback opens sealed secrets only; it never verifies a token.
    assert (await rotated.client.get("/users/me", headers=headers)).status_code == 401
    assert (
        await rotated.client.get("/users/me", headers=await rotated.bearer())
    ).status_code == 200
