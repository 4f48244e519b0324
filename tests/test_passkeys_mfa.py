"""Passkeys with multi-factor authentication and the lockout (SPEC, "Passkeys (WebAuthn)" and
"Multi-factor authentication"): user verification as two factors in one, a passkey without it
as one factor, a passkey as the second factor of a password sign-in, and failures counted for
the account's lockout and the client's failure budget.

Every test runs on SQLite and PostgreSQL, with the software authenticator of
``tests.soft_authenticator``; TOTP codes come from the frozen ``core.clock``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Harness
from tests.mfa_helpers import FrozenClock, enable_mfa, freeze, mfa_grant, password_step, totp_code
from tests.soft_authenticator import SoftAuthenticator
from tests.test_passkeys_api import (
    Account,
    account_with_passkey,
    add_passkey,
    assert_error,
    assert_refused,
    event_names,
    events,
    passkey_login,
    passkey_site,
    signed_in_as,
)

MakeHarness = Callable[..., Awaitable[Harness]]
INVALID_TOKEN = "Invalid or expired MFA token"
ONE_FACTOR_METHODS = ["totp", "recovery_code"]
PASSWORD_METHODS = ["totp", "recovery_code", "webauthn"]


@dataclass
class Enrolled:
    """alice with a passkey and TOTP on; the clock frozen, moved past the confirming step."""

    account: Account
    secret: str
    codes: list[str]
    clock: FrozenClock

    def code(self) -> str:
        return totp_code(self.secret, self.clock.now)


async def _enrolled(harness: Harness, **authenticator_knobs: Any) -> Enrolled:
    clock = freeze(harness)
    account = await account_with_passkey(
        harness, "alice", authenticator=SoftAuthenticator(**authenticator_knobs)
    )
    secret, codes, _ = await enable_mfa(harness)
    clock.advance(minutes=2)
    return Enrolled(account, secret, codes, clock)


def _mfa_required(response: httpx.Response, methods: list[str]) -> str:
    """A 403 ``MFA required`` naming ``methods``, without tokens; returns its mfa_token."""
    assert response.status_code == 403, response.text
    body = response.json()
    assert {"detail", "mfa_token", "mfa_methods"} <= set(body) and "access_token" not in body
    assert body["detail"] == "MFA required"
    assert body["mfa_methods"] == methods
    assert response.headers["cache-control"] == "no-store"
    return str(body["mfa_token"])


def _assert_locked(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "access_token" not in response.json()


@pytest.fixture
async def site(make_harness: MakeHarness) -> Harness:
    return await passkey_site(make_harness)


# --- the passkey as the first factor ----------------------------------------------------------


async def test_a_passkey_with_user_verification_satisfies_mfa(site: Harness) -> None:
    alice = await _enrolled(site)
    response = await passkey_login(site, alice.account.authenticator)
    assert await signed_in_as(site, response) == "alice"
    logins = [d for n, d in await events(site, alice.account.user_id) if n == "login_ok"]
    assert logins[-1].get("mfa") == "webauthn", logins
    assert logins[-1].get("passkey_id") == alice.account.passkey_id, logins


async def test_a_passkey_without_user_verification_is_one_factor(site: Harness) -> None:
    alice = await _enrolled(site, user_verified=False)
    token = _mfa_required(
        await passkey_login(site, alice.account.authenticator), ONE_FACTOR_METHODS
    )
    assert await signed_in_as(site, await mfa_grant(site, token, otp=alice.code())) == "alice"
    # A recovery code completes another such sign-in.
    token = _mfa_required(
        await passkey_login(site, alice.account.authenticator), ONE_FACTOR_METHODS
    )
    recovered = await mfa_grant(site, token, recovery_code=alice.codes[0])
    assert await signed_in_as(site, recovered) == "alice"


async def test_a_passkey_cannot_finish_what_a_passkey_began(site: Harness) -> None:
    """The same device is no second factor: the mfa_token of a passkey sign-in without user
    verification is not completed by a passkey, not even one that verifies the user."""
    alice = await _enrolled(site, user_verified=False)
    authenticator = alice.account.authenticator
    token = _mfa_required(await passkey_login(site, authenticator), ONE_FACTOR_METHODS)
    again = await passkey_login(site, authenticator, mfa_token=token)
    assert_refused(again, INVALID_TOKEN)
    verified = await passkey_login(site, authenticator, mfa_token=token, user_verified=True)
    assert_refused(verified, INVALID_TOKEN)


async def test_without_mfa_a_passkey_without_user_verification_signs_in(site: Harness) -> None:
    alice = await account_with_passkey(
        site, "alice", authenticator=SoftAuthenticator(user_verified=False)
    )
    assert await signed_in_as(site, await passkey_login(site, alice.authenticator)) == "alice"


# --- the passkey as the second factor ---------------------------------------------------------


async def test_password_sign_in_offers_webauthn_once_there_is_a_passkey(site: Harness) -> None:
    await site.create_user("alice")
    clock = freeze(site)
    _, _, headers = await enable_mfa(site)
    clock.advance(minutes=2)
    _mfa_required(await password_step(site), ONE_FACTOR_METHODS)
    await add_passkey(site, headers, SoftAuthenticator())
    _mfa_required(await password_step(site), PASSWORD_METHODS)


async def test_a_passkey_completes_a_password_sign_in(site: Harness) -> None:
    alice = await _enrolled(site, user_verified=False)  # UV is not needed for the 2nd factor
    token = _mfa_required(await password_step(site), PASSWORD_METHODS)
    response = await passkey_login(site, alice.account.authenticator, mfa_token=token)
    assert await signed_in_as(site, response) == "alice"
    # The token is spent.
    again = await passkey_login(site, alice.account.authenticator, mfa_token=token)
    assert_refused(again, INVALID_TOKEN)
    assert_refused(await mfa_grant(site, token, otp=alice.code()), INVALID_TOKEN)


async def test_another_accounts_passkey_is_a_wrong_second_factor(site: Harness) -> None:
    alice = await _enrolled(site)
    bob = await account_with_passkey(site, "bob")
    token = _mfa_required(await password_step(site), PASSWORD_METHODS)
    for _ in range(5):
        assert_refused(await passkey_login(site, bob.authenticator, mfa_token=token))
    # Five wrong ones kill the token, even for alice's own passkey.
    late = await passkey_login(site, alice.account.authenticator, mfa_token=token)
    assert_refused(late, INVALID_TOKEN)
    assert "passkey_failed" in await event_names(site, alice.account.user_id)


async def test_unknown_and_expired_mfa_tokens(site: Harness) -> None:
    alice = await _enrolled(site)
    authenticator = alice.account.authenticator
    assert_refused(await passkey_login(site, authenticator, mfa_token="nope"), INVALID_TOKEN)
    token = _mfa_required(await password_step(site), PASSWORD_METHODS)
    alice.clock.advance(minutes=5, seconds=1)
    assert_refused(await passkey_login(site, authenticator, mfa_token=token), INVALID_TOKEN)


# --- lockout and the client's failure budget ---------------------------------------------------


async def test_failures_with_a_known_passkey_lock_the_account(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness, login_max_failures=3)
    alice = await account_with_passkey(harness, "alice")
    for _ in range(3):
        assert_refused(await passkey_login(harness, alice.authenticator, bad_signature=True))
    _assert_locked(await passkey_login(harness, alice.authenticator))
    _assert_locked(await password_step(harness))
    assert (await event_names(harness, alice.user_id)).count("passkey_failed") >= 3


async def test_a_counter_going_back_counts_for_the_lockout(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness, login_max_failures=2)
    alice = await account_with_passkey(harness, "alice")
    await signed_in_as(harness, await passkey_login(harness, alice.authenticator, counter=10))
    for counter in (9, 10):
        assert_refused(await passkey_login(harness, alice.authenticator, counter=counter))
    _assert_locked(await passkey_login(harness, alice.authenticator, counter=11))


async def test_one_factor_forgives_no_failures_when_mfa_is_on(make_harness: MakeHarness) -> None:
    """As with a right password: a passkey without user verification on an MFA account
    opens an mfa_token but does not reset the failure count (else it would reset it between
    batches of guessed codes)."""
    harness = await passkey_site(make_harness, login_max_failures=3)
    alice = await _enrolled(harness, user_verified=False)
    for _ in range(2):
        assert (await password_step(harness, password="wrong")).status_code == 401
    _mfa_required(await passkey_login(harness, alice.account.authenticator), ONE_FACTOR_METHODS)
    assert (await password_step(harness, password="wrong")).status_code == 401
    _assert_locked(await passkey_login(harness, alice.account.authenticator))


async def test_a_verifying_passkey_forgives_earlier_failures(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness, login_max_failures=3)
    alice = await _enrolled(harness)
    for _ in range(2):
        assert (await password_step(harness, password="wrong")).status_code == 401
    assert await signed_in_as(harness, await passkey_login(harness, alice.account.authenticator))
    for _ in range(2):
        assert (await password_step(harness, password="wrong")).status_code == 401
    _mfa_required(await password_step(harness), PASSWORD_METHODS)


async def test_unknown_credentials_lock_no_account(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness, login_max_failures=2)
    alice = await account_with_passkey(harness, "alice")
    stranger = SoftAuthenticator()
    stranger.register(
        {
            "rp": {"id": "localhost", "name": "x"},
            "user": {"id": "c3RyYW5nZXI", "name": "stranger"},
            "challenge": "AAAA",
        }
    )  # never sent to authdb
    for _ in range(3):
        assert_refused(await passkey_login(harness, stranger))
    assert await signed_in_as(harness, await passkey_login(harness, alice.authenticator)) == "alice"


async def test_passkey_failures_spend_the_clients_budget(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness, rate_limit_login_failures="3/minute")
    alice = await account_with_passkey(harness, "alice")
    stranger = SoftAuthenticator()
    stranger.register(
        {
            "rp": {"id": "localhost", "name": "x"},
            "user": {"id": "c3RyYW5nZXI", "name": "stranger"},
            "challenge": "AAAA",
        }
    )
    assert_refused(await passkey_login(harness, stranger))
    assert_refused(await passkey_login(harness, alice.authenticator, bad_signature=True))
    assert_refused(await passkey_login(harness, alice.authenticator, origin="http://evil.example"))
    _assert_locked(await passkey_login(harness, alice.authenticator))
    _assert_locked(await password_step(harness))


async def test_a_wrong_second_factor_passkey_counts_for_the_lockout(
    make_harness: MakeHarness,
) -> None:
    harness = await passkey_site(make_harness, login_max_failures=3)
    await _enrolled(harness)
    bob = await account_with_passkey(harness, "bob")
    for _ in range(3):
        token = _mfa_required(await password_step(harness), PASSWORD_METHODS)
        assert_refused(await passkey_login(harness, bob.authenticator, mfa_token=token))
    locked = await password_step(harness)
    _assert_locked(locked)
    assert_error(locked, 429, "Too many requests")
