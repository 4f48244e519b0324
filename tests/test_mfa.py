"""Multi-factor authentication (SPEC, "Multi-factor authentication"): TOTP set-up, recovery
codes, turning it off, the administrator's reset, and the two-step sign-in on ``/token``.

Every HTTP test runs on SQLite and PostgreSQL. Codes are computed by ``pyotp`` from the
secret the API returned, at the instant the app's frozen ``core.clock`` says.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pyotp
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from authdb.db.models import MFAChallenge, RecoveryCode, TOTPSecret, User
from authdb.services import audit
from tests.conftest import PASSWORD, Harness, Mailbox
from tests.mfa_helpers import (
    FrozenClock,
    enable_mfa,
    freeze,
    mfa_grant,
    mfa_token,
    password_step,
    totp_code,
)
from tests.signing_helpers import sqlite_bytes, stored_values

MakeHarness = Callable[..., Awaitable[Harness]]
SETUP = "/users/me/mfa/totp/setup"
CONFIRM = "/users/me/mfa/totp/confirm"
RECOVERY = "/users/me/mfa/recovery-codes"
ME_MFA = "/users/me/mfa"
INVALID_CODE = "Invalid MFA code"
INVALID_TOKEN = "Invalid or expired MFA token"
# Crockford's base32: 32 symbols, so 10 of them carry 50 bits.
CODE_SYMBOLS = set("0123456789abcdefghjkmnpqrstvwxyz")


# --- small helpers --------------------------------------------------------------------------


async def _user_id(harness: Harness, headers: dict[str, str]) -> int:
    me = await harness.client.get("/users/me", headers=headers)
    assert me.status_code == 200, me.text
    return int(me.json()["id"])


async def _superuser(harness: Harness) -> dict[str, str]:
    await harness.create_user("root", is_superuser=True)
    return await harness.bearer("root")


async def _events(harness: Harness, user_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await audit.list_events(harness.auth.core, user_id=user_id)
    return [(row.event, dict(row.detail or {})) for row in rows]


async def _names(harness: Harness, user_id: int) -> list[str]:
    return [name for name, _ in await _events(harness, user_id)]


async def _mfa_rows(harness: Harness, user_id: int) -> dict[str, int]:
    """How many rows each MFA table holds for ``user_id``."""
    counts: dict[str, int] = {}
    async with harness.auth.core.sessionmaker() as db:
        for model in (TOTPSecret, RecoveryCode, MFAChallenge):
            query = select(func.count()).select_from(model).where(model.user_id == user_id)
            counts[model.__tablename__] = int(await db.scalar(query) or 0)
    return counts


async def _delete_mfa(
    harness: Harness, headers: dict[str, str], code: str, password: str = PASSWORD
) -> httpx.Response:
    return await harness.client.request(
        "DELETE", ME_MFA, json={"password": password, "code": code}, headers=headers
    )


def _assert_error(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["detail"] == detail


def _assert_grant_refused(response: httpx.Response, detail: str) -> None:
    """A 401 from the MFA grant: OAuth ``invalid_grant``, no tokens."""
    _assert_error(response, 401, detail)
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert "access_token" not in body and "mfa_token" not in body


def _assert_locked(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "access_token" not in response.json()


async def _signed_in_with(harness: Harness, response: httpx.Response) -> str:
    """The token pair of a 200 works on /users/me; returns the username it names."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["refresh_token"]
    assert response.headers["cache-control"] == "no-store"
    me = await harness.client.get(
        "/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200, me.text
    return str(me.json()["username"])


@dataclass
class Enrolled:
    """alice with MFA on: what the API gave, the frozen clock and a pre-MFA bearer."""

    secret: str
    codes: list[str]
    clock: FrozenClock
    headers: dict[str, str]
    user_id: int

    def code(self, offset: int = 0) -> str:
        """The TOTP code of the clock's step plus ``offset``."""
        return totp_code(self.secret, self.clock.now, offset)


async def _enrolled(harness: Harness, **overrides: Any) -> Enrolled:
    """alice with MFA on, the clock frozen at set-up and then moved 2 minutes (4 steps) on,
    so that no code of the sign-in window is the step the confirmation spent."""
    await harness.create_user("alice", **overrides)
    clock = freeze(harness)
    secret, codes, headers = await enable_mfa(harness)
    clock.advance(minutes=2)
    return Enrolled(secret, codes, clock, headers, await _user_id(harness, headers))


# --- set-up ---------------------------------------------------------------------------------


async def test_setup_returns_secret_uri_and_qr(harness: Harness) -> None:
    await harness.create_user("alice")
    headers = await harness.bearer()
    response = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    secret = body["secret"]
    # 160 bits of base32, which pyotp (an authenticator app) can use.
    assert len(base64.b32decode(secret)) == 20
    assert len(pyotp.TOTP(secret).now()) == 6
    uri = urlsplit(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == "/authdb:alice"
    query = parse_qs(uri.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["authdb"]
    assert body["otpauth_uri"].startswith("otpauth://totp/authdb:alice?")
    assert body["qr_svg"].lstrip().startswith("<svg") and body["qr_svg"].rstrip().endswith("</svg>")
    # Pending, not on; and the secret is never shown again.
    me = await harness.client.get("/users/me", headers=headers)
    assert me.json()["mfa_enabled"] is False
    assert secret not in me.text
    user_id = me.json()["id"]
    assert "mfa_setup_started" in await _names(harness, user_id)


async def test_setup_uses_the_configured_issuer(make_harness: MakeHarness) -> None:
    harness = await make_harness(mfa_issuer="Example Co")
    await harness.create_user("alice")
    headers = await harness.bearer()
    response = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    assert response.status_code == 200, response.text
    uri = urlsplit(response.json()["otpauth_uri"])
    assert unquote(uri.path) == "/Example Co:alice"
    assert parse_qs(uri.query)["issuer"] == ["Example Co"]


async def test_setup_with_a_wrong_password_is_a_failed_login(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=3)
    await harness.create_user("alice")
    headers = await harness.bearer()
    user_id = await _user_id(harness, headers)
    for _ in range(3):
        response = await harness.client.post(SETUP, json={"password": "wrong"}, headers=headers)
        _assert_error(response, 400, "Incorrect password")
    names = await _names(harness, user_id)
    assert names.count("password_failed") == 3 and "lockout" in names
    assert "mfa_setup_started" not in names
    # The account is locked like after three wrong passwords at /token.
    _assert_locked(await password_step(harness))
    _assert_locked(await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers))


async def test_setup_again_replaces_the_pending_secret(harness: Harness) -> None:
    await harness.create_user("alice")
    clock = freeze(harness)
    headers = await harness.bearer()
    first = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    second = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    assert first.status_code == second.status_code == 200
    old, new = first.json()["secret"], second.json()["secret"]
    assert old != new
    # Pick an instant at which no code of the old secret's is also valid under the new one,
    # so the refusal below can only mean the old secret is gone.
    new_window = {totp_code(new, clock.now, offset) for offset in (-1, 0, 1)}
    while totp_code(old, clock.now) in new_window:
        clock.advance(seconds=30)
        new_window = {totp_code(new, clock.now, offset) for offset in (-1, 0, 1)}
    stale = await harness.client.post(
        CONFIRM, json={"code": totp_code(old, clock.now)}, headers=headers
    )
    _assert_error(stale, 400, INVALID_CODE)
    fresh = await harness.client.post(
        CONFIRM, json={"code": totp_code(new, clock.now)}, headers=headers
    )
    assert fresh.status_code == 200, fresh.text


# --- confirmation ---------------------------------------------------------------------------


async def test_confirm_turns_mfa_on_with_ten_recovery_codes(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user("alice")
    root = await _superuser(harness)
    freeze(harness)
    _, codes, headers = await enable_mfa(harness)
    assert len(codes) == 10 and len(set(codes)) == 10
    for code in codes:
        symbols = code.replace("-", "").lower()
        assert set(symbols) <= CODE_SYMBOLS and len(symbols) >= 10  # >= 50 bits
    me = await harness.client.get("/users/me", headers=headers)
    assert me.json()["mfa_enabled"] is True
    user_id = me.json()["id"]
    admin_view = await harness.client.get(f"/users/{user_id}", headers=root)
    assert admin_view.status_code == 200 and admin_view.json()["mfa_enabled"] is True
    listed = await harness.client.get("/users", headers=root)
    by_name = {item["username"]: item["mfa_enabled"] for item in listed.json()["items"]}
    assert by_name == {"alice": True, "root": False}
    (notice,) = await mailbox.wait_for(1)
    assert "alice@example.com" in str(notice["To"])
    assert re.search(r"\bon\b", str(notice["Subject"])), notice["Subject"]
    events = await _events(harness, user_id)
    names = [name for name, _ in events]
    assert names.index("mfa_setup_started") < names.index("mfa_enabled")


async def test_confirm_errors(harness: Harness) -> None:
    await harness.create_user("alice")
    clock = freeze(harness)
    headers = await harness.bearer()
    nothing = await harness.client.post(CONFIRM, json={"code": "123456"}, headers=headers)
    _assert_error(nothing, 409, "No MFA setup in progress")
    setup = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    secret = setup.json()["secret"]
    window = {totp_code(secret, clock.now, offset) for offset in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in window)
    response = await harness.client.post(CONFIRM, json={"code": wrong}, headers=headers)
    _assert_error(response, 400, INVALID_CODE)
    for bad in ("", "x" * 65):
        malformed = await harness.client.post(CONFIRM, json={"code": bad}, headers=headers)
        assert malformed.status_code == 422, malformed.text
    me = await harness.client.get("/users/me", headers=headers)
    assert me.json()["mfa_enabled"] is False
    # Spaces between digit groups are allowed (as apps show them).
    spaced = totp_code(secret, clock.now)
    spaced = f"{spaced[:3]} {spaced[3:]}"
    ok = await harness.client.post(CONFIRM, json={"code": spaced}, headers=headers)
    assert ok.status_code == 200, ok.text
    again = await harness.client.post(
        CONFIRM, json={"code": totp_code(secret, clock.now, 1)}, headers=headers
    )
    _assert_error(again, 409, "No MFA setup in progress")
    on = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    _assert_error(on, 409, "MFA already enabled")
    unauthenticated = await harness.client.post(CONFIRM, json={"code": "123456"})
    assert unauthenticated.status_code == 401


# --- recovery codes -------------------------------------------------------------------------


async def test_regenerating_recovery_codes_retires_the_old_ones(harness: Harness) -> None:
    await harness.create_user("alice")
    headers = await harness.bearer()
    off = await harness.client.post(RECOVERY, json={"password": PASSWORD}, headers=headers)
    _assert_error(off, 409, "MFA not enabled")
    freeze(harness)
    _, old, headers = await enable_mfa(harness)
    wrong = await harness.client.post(RECOVERY, json={"password": "wrong"}, headers=headers)
    _assert_error(wrong, 400, "Incorrect password")
    assert "password_failed" in await _names(harness, await _user_id(harness, headers))
    response = await harness.client.post(RECOVERY, json={"password": PASSWORD}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    new = response.json()["recovery_codes"]
    assert len(new) == 10 and len(set(new)) == 10 and not set(new) & set(old)
    _assert_grant_refused(
        await mfa_grant(harness, await mfa_token(harness), recovery_code=old[0]), INVALID_CODE
    )
    grant = await mfa_grant(harness, await mfa_token(harness), recovery_code=new[0])
    assert await _signed_in_with(harness, grant) == "alice"


async def test_each_recovery_code_signs_in_once(harness: Harness) -> None:
    alice = await _enrolled(harness)
    codes = alice.codes
    # Typed leniently: another case, or without the hyphens.
    typed = [codes[0].upper(), codes[1].replace("-", ""), *codes[2:]]
    for code in typed:
        grant = await mfa_grant(harness, await mfa_token(harness), recovery_code=code)
        assert await _signed_in_with(harness, grant) == "alice"
    for code in codes[:3]:
        again = await mfa_grant(harness, await mfa_token(harness), recovery_code=code)
        _assert_grant_refused(again, INVALID_CODE)
    events = await _events(harness, alice.user_id)
    assert [name for name, _ in events].count("mfa_recovery_code_used") == 10
    methods = [detail.get("mfa") for name, detail in events if name == "login_ok"]
    assert methods.count("recovery_code") == 10


# --- turning it off -------------------------------------------------------------------------


async def test_turning_off_with_a_totp_code(harness: Harness, mailbox: Mailbox) -> None:
    alice = await _enrolled(harness)
    await mailbox.wait_for(1)  # the "on" notice
    response = await _delete_mfa(harness, alice.headers, alice.code())
    assert response.status_code == 204, response.text
    me = await harness.client.get("/users/me", headers=alice.headers)
    assert me.json()["mfa_enabled"] is False
    assert await _mfa_rows(harness, alice.user_id) == {
        "mfa_totp": 0,
        "mfa_recovery_codes": 0,
        "mfa_challenges": 0,
    }
    # The password alone signs in again.
    assert await _signed_in_with(harness, await password_step(harness)) == "alice"
    messages = await mailbox.wait_for(2)
    assert re.search(r"\boff\b", str(messages[1]["Subject"])), messages[1]["Subject"]
    assert "alice@example.com" in str(messages[1]["To"])
    events = await _events(harness, alice.user_id)
    assert ("mfa_disabled", "totp") in [(name, d.get("method")) for name, d in events]
    # Nothing left to turn off.
    again = await _delete_mfa(harness, alice.headers, alice.code(1))
    _assert_error(again, 409, "MFA not enabled")


async def test_turning_off_refuses_wrong_proofs_then_takes_a_recovery_code(
    harness: Harness,
) -> None:
    alice = await _enrolled(harness)
    wrong_password = await _delete_mfa(harness, alice.headers, alice.code(), password="wrong")
    _assert_error(wrong_password, 400, "Incorrect password")
    window = {alice.code(offset) for offset in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222") if c not in window)
    for code in (wrong, "aaaa-bbbb-cccc"):
        response = await _delete_mfa(harness, alice.headers, code)
        _assert_error(response, 400, INVALID_CODE)
    assert (await _mfa_rows(harness, alice.user_id))["mfa_recovery_codes"] == 10
    me = await harness.client.get("/users/me", headers=alice.headers)
    assert me.json()["mfa_enabled"] is True
    names = await _names(harness, alice.user_id)
    assert names.count("mfa_failed") == 2 and names.count("password_failed") == 1
    assert "mfa_disabled" not in names
    # Then a recovery code (in capitals) turns it off, outstanding mfa_tokens included.
    await mfa_token(harness)
    assert (await _mfa_rows(harness, alice.user_id))["mfa_challenges"] == 1
    response = await _delete_mfa(harness, alice.headers, alice.codes[4].upper())
    assert response.status_code == 204, response.text
    assert await _mfa_rows(harness, alice.user_id) == {
        "mfa_totp": 0,
        "mfa_recovery_codes": 0,
        "mfa_challenges": 0,
    }
    me = await harness.client.get("/users/me", headers=alice.headers)
    assert me.json()["mfa_enabled"] is False
    events = await _events(harness, alice.user_id)
    assert ("mfa_disabled", "recovery_code") in [(name, d.get("method")) for name, d in events]


async def test_wrong_codes_when_turning_off_lock_the_account(make_harness: MakeHarness) -> None:
    """SPEC: a wrong code here counts as a failed login, so a stolen access token plus the
    password is no unlimited oracle for codes. Three wrong codes with the right password
    (login_max_failures=3) lock the account like three wrong passwords."""
    harness = await make_harness(login_max_failures=3)
    alice = await _enrolled(harness)
    window = {alice.code(offset) for offset in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222") if c not in window)
    for _ in range(3):
        response = await _delete_mfa(harness, alice.headers, wrong)
        _assert_error(response, 400, INVALID_CODE)
    _assert_locked(await _delete_mfa(harness, alice.headers, alice.code()))
    _assert_locked(await password_step(harness))


# --- the administrator's reset --------------------------------------------------------------


async def test_admin_reset_turns_mfa_off_and_kills_mfa_tokens(
    harness: Harness, mailbox: Mailbox
) -> None:
    alice = await _enrolled(harness)
    root = await _superuser(harness)
    await mailbox.wait_for(1)
    unknown = await harness.client.delete("/users/999999/mfa", headers=root)
    _assert_error(unknown, 404, "User not found")
    malformed = await harness.client.delete("/users/abc/mfa", headers=root)
    assert malformed.status_code == 422
    not_admin = await harness.client.delete(f"/users/{alice.user_id}/mfa", headers=alice.headers)
    _assert_error(not_admin, 403, "Not enough permissions")
    anonymous = await harness.client.delete(f"/users/{alice.user_id}/mfa")
    _assert_error(anonymous, 401, "Not authenticated")
    me = await harness.client.get("/users/me", headers=alice.headers)
    assert me.json()["mfa_enabled"] is True
    outstanding = await mfa_token(harness)
    response = await harness.client.delete(f"/users/{alice.user_id}/mfa", headers=root)
    assert response.status_code == 204, response.text
    _assert_grant_refused(await mfa_grant(harness, outstanding, otp=alice.code()), INVALID_TOKEN)
    view = await harness.client.get(f"/users/{alice.user_id}", headers=root)
    assert view.json()["mfa_enabled"] is False
    assert await _mfa_rows(harness, alice.user_id) == {
        "mfa_totp": 0,
        "mfa_recovery_codes": 0,
        "mfa_challenges": 0,
    }
    assert await _signed_in_with(harness, await password_step(harness)) == "alice"
    messages = await mailbox.wait_for(2)
    assert re.search(r"\boff\b", str(messages[1]["Subject"])), messages[1]["Subject"]
    assert "alice@example.com" in str(messages[1]["To"])
    events = await _events(harness, alice.user_id)
    assert "mfa_reset" in [name for name, _ in events]
    # Her own sessions stay (SPEC is silent; the route's docstring says so).
    me = await harness.client.get("/users/me", headers=alice.headers)
    assert me.status_code == 200


# --- signing in -----------------------------------------------------------------------------


async def test_right_password_asks_for_the_second_factor_which_completes_it(
    harness: Harness,
) -> None:
    alice = await _enrolled(harness)
    response = await password_step(harness)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["detail"] == "MFA required"
    assert body["error"] == "mfa_required"
    assert isinstance(body["mfa_token"], str) and len(body["mfa_token"]) >= 32
    assert body["mfa_methods"] == ["totp", "recovery_code"]
    assert "access_token" not in body and "refresh_token" not in body
    assert response.headers["cache-control"] == "no-store"
    # The email works as the login name too.
    by_email = await password_step(harness, "ALICE@example.com")
    assert by_email.status_code == 403 and by_email.json()["mfa_token"] != body["mfa_token"]
    wrong = await password_step(harness, "alice", "wrong password")
    _assert_error(wrong, 401, "Incorrect username or password")
    assert "mfa_token" not in wrong.json() and wrong.json()["error"] == "invalid_grant"
    names = await _names(harness, alice.user_id)
    assert names.count("login_mfa_required") == 2
    assert "login_ok" not in names[names.index("mfa_enabled") :]
    # The second step with a TOTP code: the usual token pair.
    grant = await mfa_grant(harness, body["mfa_token"], otp=alice.code())
    assert await _signed_in_with(harness, grant) == "alice"
    refreshed = await harness.client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": grant.json()["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text
    events = await _events(harness, alice.user_id)
    assert ("login_ok", "totp") in [(name, d.get("mfa")) for name, d in events]


async def test_codes_one_step_either_side_are_accepted_two_are_not(harness: Harness) -> None:
    alice = await _enrolled(harness)
    for offset in (-2, 2):
        refused = await mfa_grant(harness, await mfa_token(harness), otp=alice.code(offset))
        _assert_grant_refused(refused, INVALID_CODE)
    # In step order: once a step is accepted, it and earlier steps are replays.
    for offset in (-1, 1):
        grant = await mfa_grant(harness, await mfa_token(harness), otp=alice.code(offset))
        assert await _signed_in_with(harness, grant) == "alice"


async def test_an_accepted_code_is_refused_a_second_time(harness: Harness) -> None:
    await harness.create_user("alice")
    clock = freeze(harness)
    secret, _, _ = await enable_mfa(harness)
    # The code that confirmed the set-up cannot sign in (same instant, same step).
    confirming = totp_code(secret, clock.now)
    _assert_grant_refused(
        await mfa_grant(harness, await mfa_token(harness), otp=confirming), INVALID_CODE
    )
    clock.advance(seconds=30)
    code = totp_code(secret, clock.now)
    first = await mfa_grant(harness, await mfa_token(harness), otp=code)
    assert await _signed_in_with(harness, first) == "alice"
    replay = await mfa_grant(harness, await mfa_token(harness), otp=code)
    _assert_grant_refused(replay, INVALID_CODE)
    # An earlier step, still inside the window, is refused too once a later one was used.
    earlier = await mfa_grant(
        harness, await mfa_token(harness), otp=totp_code(secret, clock.now, -1)
    )
    _assert_grant_refused(earlier, INVALID_CODE)
    clock.advance(seconds=30)
    later = await mfa_grant(harness, await mfa_token(harness), otp=totp_code(secret, clock.now))
    assert await _signed_in_with(harness, later) == "alice"


async def test_malformed_mfa_grants_get_422(harness: Harness) -> None:
    alice = await _enrolled(harness)
    token = await mfa_token(harness)
    cases: list[dict[str, str]] = [
        {"otp": alice.code()},  # no mfa_token
        {"mfa_token": token},  # neither factor
        {"mfa_token": token, "otp": alice.code(), "recovery_code": alice.codes[0]},  # both
        {"mfa_token": token, "otp": "1" * 65},  # over the field's length
    ]
    for fields in cases:
        data = {"grant_type": "urn:authdb:params:oauth:grant-type:mfa", **fields}
        response = await harness.client.post("/token", data=data)
        assert response.status_code == 422, (fields, response.text)
        assert response.json()["error"] == "invalid_request"
        assert isinstance(response.json()["detail"], list)
    # None of those spent the token or the code.
    grant = await mfa_grant(harness, token, otp=alice.code())
    assert await _signed_in_with(harness, grant) == "alice"


async def test_unknown_used_and_expired_mfa_tokens(harness: Harness) -> None:
    alice = await _enrolled(harness)
    unknown = await mfa_grant(harness, "not-a-token", otp=alice.code())
    _assert_grant_refused(unknown, INVALID_TOKEN)
    token = await mfa_token(harness)
    assert (await mfa_grant(harness, token, otp=alice.code())).status_code == 200
    alice.clock.advance(seconds=30)
    used = await mfa_grant(harness, token, otp=alice.code())
    _assert_grant_refused(used, INVALID_TOKEN)
    # Lives 5 minutes: still good just before, dead just after.
    alice.clock.advance(seconds=30)
    token = await mfa_token(harness)
    alice.clock.advance(minutes=5, seconds=1)
    expired = await mfa_grant(harness, token, otp=alice.code())
    _assert_grant_refused(expired, INVALID_TOKEN)
    token = await mfa_token(harness)
    alice.clock.advance(minutes=4, seconds=59)
    fresh = await mfa_grant(harness, token, otp=alice.code())
    assert await _signed_in_with(harness, fresh) == "alice"
    # An unknown token does not count as a failed login for anyone.
    assert "mfa_failed" not in await _names(harness, alice.user_id)


async def test_five_wrong_codes_kill_the_mfa_token(harness: Harness) -> None:
    alice = await _enrolled(harness)
    token = await mfa_token(harness)
    window = {alice.code(offset) for offset in (-1, 0, 1)}
    wrong = [c for c in (f"{d}" * 6 for d in range(10)) if c not in window][:5]
    for code in wrong:
        _assert_grant_refused(await mfa_grant(harness, token, otp=code), INVALID_CODE)
    dead = await mfa_grant(harness, token, otp=alice.code())
    _assert_grant_refused(dead, INVALID_TOKEN)
    dead = await mfa_grant(harness, token, recovery_code=alice.codes[0])
    _assert_grant_refused(dead, INVALID_TOKEN)
    # The right code was not spent by the dead token: a new one takes it.
    grant = await mfa_grant(harness, await mfa_token(harness), otp=alice.code())
    assert await _signed_in_with(harness, grant) == "alice"
    assert (await _names(harness, alice.user_id)).count("mfa_failed") == 5


# --- lockout --------------------------------------------------------------------------------


def _wrong_code(alice: Enrolled) -> str:
    """A well-formed code that is none of the window's (so it is wrong, not a replay)."""
    window = {alice.code(offset) for offset in (-1, 0, 1)}
    return next(c for c in (f"{d}" * 6 for d in range(10)) if c not in window)


async def test_wrong_codes_lock_the_account_like_wrong_passwords(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=3, login_lockout_minutes=1)
    alice = await _enrolled(harness)
    spare = await mfa_token(harness)  # opened before the lock
    for _ in range(3):  # each with a fresh mfa_token: the account counts, not the token
        refused = await mfa_grant(harness, await mfa_token(harness), otp=_wrong_code(alice))
        _assert_grant_refused(refused, INVALID_CODE)
    _assert_locked(await mfa_grant(harness, spare, otp=alice.code()))
    _assert_locked(await mfa_grant(harness, spare, recovery_code=alice.codes[0]))
    _assert_locked(await password_step(harness))
    names = await _names(harness, alice.user_id)
    assert names.count("mfa_failed") == 3 and "lockout" in names
    # When the lock ends, a right code signs in again.
    alice.clock.advance(minutes=1, seconds=1)
    grant = await mfa_grant(harness, await mfa_token(harness), otp=alice.code())
    assert await _signed_in_with(harness, grant) == "alice"


async def test_only_a_completed_mfa_login_forgives_failed_codes(make_harness: MakeHarness) -> None:
    """A completed MFA login resets the count; a right password alone (403) does not, else
    it would reset the count between batches of guessed codes."""
    harness = await make_harness(login_max_failures=3)
    alice = await _enrolled(harness)
    for _ in range(2):
        refused = await mfa_grant(harness, await mfa_token(harness), otp=_wrong_code(alice))
        _assert_grant_refused(refused, INVALID_CODE)
    grant = await mfa_grant(harness, await mfa_token(harness), otp=alice.code())
    assert await _signed_in_with(harness, grant) == "alice"  # forgives those two
    for _ in range(2):
        refused = await mfa_grant(harness, await mfa_token(harness), otp=_wrong_code(alice))
        _assert_grant_refused(refused, INVALID_CODE)  # 1 and 2 of 3: not locked yet
    # The password alone, twice: 403 each time, and nothing forgiven.
    token, spare = await mfa_token(harness), await mfa_token(harness)
    refused = await mfa_grant(harness, token, otp=_wrong_code(alice))
    _assert_grant_refused(refused, INVALID_CODE)  # the third: sets the lock
    _assert_locked(await password_step(harness))
    _assert_locked(await mfa_grant(harness, spare, otp=alice.code(1)))


async def test_a_user_disabled_between_the_steps_is_refused(harness: Harness) -> None:
    alice = await _enrolled(harness)
    root = await _superuser(harness)
    token = await mfa_token(harness)
    patched = await harness.client.patch(
        f"/users/{alice.user_id}", json={"disabled": True}, headers=root
    )
    assert patched.status_code == 200, patched.text
    # Disabling ends the half-done sign-in with the sessions, even if re-enabled at once.
    enabled = await harness.client.patch(
        f"/users/{alice.user_id}", json={"disabled": False}, headers=root
    )
    assert enabled.status_code == 200, enabled.text
    _assert_grant_refused(await mfa_grant(harness, token, otp=alice.code()), INVALID_TOKEN)


async def test_an_account_refused_after_its_password_is_refused_at_the_code_too(
    make_harness: MakeHarness,
) -> None:
    # require_verified_email turned on between the two steps (e.g. by a restart): 400 as /token.
    harness = await make_harness()
    alice = await _enrolled(harness)
    token = await mfa_token(harness)
    async with harness.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == alice.user_id).values(is_verified=False))
    harness.auth.core.settings.require_verified_email = True
    refused = await mfa_grant(harness, token, otp=alice.code())
    _assert_error(refused, 400, "Email not verified")
    assert refused.json()["error"] == "invalid_grant" and "access_token" not in refused.json()


async def test_otp_takes_only_a_totp_code_and_recovery_code_only_a_recovery_code(
    harness: Harness,
) -> None:
    alice = await _enrolled(harness)
    token = await mfa_token(harness)
    _assert_grant_refused(await mfa_grant(harness, token, otp=alice.codes[0]), "Invalid MFA code")
    _assert_grant_refused(
        await mfa_grant(harness, token, recovery_code=alice.code()), "Invalid MFA code"
    )
    # Neither was spent by being offered in the wrong field.
    assert (await mfa_grant(harness, token, recovery_code=alice.codes[0])).status_code == 200
    assert (await mfa_grant(harness, await mfa_token(harness), otp=alice.code())).status_code == 200


async def test_a_new_password_ends_sign_ins_waiting_for_their_code(harness: Harness) -> None:
    alice = await _enrolled(harness)
    token = await mfa_token(harness)
    changed = await harness.client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": "an entirely new passphrase"},
        headers=alice.headers,
    )
    assert changed.status_code == 204, changed.text
    # Begun with the old password: it cannot be finished, even with a right code.
    _assert_grant_refused(await mfa_grant(harness, token, otp=alice.code()), INVALID_TOKEN)


# --- secrets at rest ------------------------------------------------------------------------


async def _assert_stored_nowhere(harness: Harness, needles: list[str | bytes]) -> None:
    values = await stored_values(harness.auth.core.engine)
    # The scan does see what is stored: alice's email is in it.
    assert any("alice@example.com" in str(value) for value in values)
    for value in values:
        for needle in needles:
            if isinstance(value, bytes | bytearray | memoryview):
                raw = bytes(value)
                assert (needle if isinstance(needle, bytes) else needle.encode()) not in raw
            else:
                assert str(needle) not in str(value)
    blob = sqlite_bytes(harness.auth.core.engine)
    if blob is not None:
        assert b"alice@example.com" in blob
        for needle in needles:
            assert (needle if isinstance(needle, bytes) else needle.encode()) not in blob


def _secret_forms(secret: str) -> list[str | bytes]:
    raw = base64.b32decode(secret)
    return [secret, secret.lower(), raw, raw.hex(), base64.b64encode(raw).decode()]


def _code_forms(code: str) -> list[str | bytes]:
    bare = code.replace("-", "")
    return [code, code.upper(), bare, bare.upper()]


async def test_the_secret_and_recovery_codes_are_not_stored_in_plain_text(
    harness: Harness,
) -> None:
    await harness.create_user("alice")
    clock = freeze(harness)
    headers = await harness.bearer()
    setup = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    secret = setup.json()["secret"]
    await _assert_stored_nowhere(harness, _secret_forms(secret))
    confirm = await harness.client.post(
        CONFIRM, json={"code": totp_code(secret, clock.now)}, headers=headers
    )
    assert confirm.status_code == 200, confirm.text
    assert secret not in confirm.text
    codes = confirm.json()["recovery_codes"]
    needles = _secret_forms(secret) + [form for code in codes for form in _code_forms(code)]
    await _assert_stored_nowhere(harness, needles)
    # Nor after they are used: a sign-in with each kind of factor.
    clock.advance(seconds=30)
    totp_grant = await mfa_grant(
        harness, await mfa_token(harness), otp=totp_code(secret, clock.now)
    )
    assert totp_grant.status_code == 200, totp_grant.text
    code_grant = await mfa_grant(harness, await mfa_token(harness), recovery_code=codes[0])
    assert code_grant.status_code == 200, code_grant.text
    await _assert_stored_nowhere(harness, needles)
    me = await harness.client.get("/users/me", headers=headers)
    assert secret not in me.text


# --- races ----------------------------------------------------------------------------------


async def test_concurrent_grants_with_one_code_have_one_winner(harness: Harness) -> None:
    alice = await _enrolled(harness)
    token = await mfa_token(harness)
    same_token = await asyncio.gather(
        mfa_grant(harness, token, otp=alice.code()), mfa_grant(harness, token, otp=alice.code())
    )
    assert sorted(r.status_code for r in same_token) == [200, 401], [r.text for r in same_token]
    # Two sign-ins (two tabs) racing with one TOTP code, then with one recovery code.
    alice.clock.advance(seconds=30)
    tokens = [await mfa_token(harness), await mfa_token(harness)]
    by_code = await asyncio.gather(*(mfa_grant(harness, t, otp=alice.code()) for t in tokens))
    assert sorted(r.status_code for r in by_code) == [200, 401], [r.text for r in by_code]
    tokens = [await mfa_token(harness), await mfa_token(harness)]
    by_recovery = await asyncio.gather(
        *(mfa_grant(harness, t, recovery_code=alice.codes[0]) for t in tokens)
    )
    assert sorted(r.status_code for r in by_recovery) == [200, 401]
    for response in (*same_token, *by_code, *by_recovery):
        if response.status_code == 401:
            assert response.json()["detail"] in (INVALID_CODE, INVALID_TOKEN)
    events = await _events(harness, alice.user_id)
    since_on = events[[name for name, _ in events].index("mfa_enabled") :]
    logins = [d.get("mfa") for name, d in since_on if name == "login_ok"]
    assert logins == ["totp", "totp", "recovery_code"]


# --- any input ------------------------------------------------------------------------------


@pytest.fixture
async def open_alice(make_harness: MakeHarness) -> tuple[Harness, Enrolled]:
    """alice with MFA on, on a harness that never locks her (so every answer is about the
    input, not a lock)."""
    harness = await make_harness(login_max_failures=1000)
    return harness, await _enrolled(harness)


_ODD = st.sampled_from(
    [
        "",
        " ",
        "000000",
        "12 34 56",
        "12-34-56",
        "\u0661\u0662\u0663\u0664\u0665\u0666",
        "\U0001d7d9\U0001d7da\U0001d7db\U0001d7dc\U0001d7dd\U0001d7de",
        "\x00",
        "a" * 64,
        "a" * 65,
    ]
)
_FIELD = st.one_of(st.none(), _ODD, st.text(max_size=80))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(token=st.one_of(st.none(), _ODD, st.text(max_size=80)), otp=_FIELD, recovery_code=_FIELD)
async def test_any_text_in_the_mfa_grant_is_refused_with_a_4xx(
    open_alice: tuple[Harness, Enrolled],
    token: str | None,
    otp: str | None,
    recovery_code: str | None,
) -> None:
    """``token`` None stands for a real, open mfa_token; any other value is sent as is."""
    harness, alice = open_alice
    assume(otp not in {alice.code(offset) for offset in (-1, 0, 1)})
    assume(recovery_code not in alice.codes)
    real = token is None
    if token is None:
        token = await mfa_token(harness)
    data = {"grant_type": "urn:authdb:params:oauth:grant-type:mfa", "mfa_token": token}
    data |= {"otp": otp} if otp is not None else {}
    data |= {"recovery_code": recovery_code} if recovery_code is not None else {}
    response = await harness.client.post("/token", data=data)
    assert response.status_code in (401, 422), response.text
    body = response.json()
    assert body["detail"] and body["error"] in ("invalid_grant", "invalid_request")
    assert "access_token" not in body
    if response.status_code == 401:
        assert body["detail"] == (INVALID_CODE if real else INVALID_TOKEN)


# --- found by attacking the feature -----------------------------------------------------------


async def test_wrong_first_codes_count_and_a_locked_account_confirms_nothing(
    make_harness: MakeHarness,
) -> None:
    """A stolen access token must not try set-up codes until one fits (which would hand the
    thief the recovery codes): wrong first codes lock the account like wrong passwords, and
    while it is locked the right code is not even looked at."""
    harness = await make_harness(login_max_failures=3)
    await harness.create_user("alice")
    clock = freeze(harness)
    headers = await harness.bearer()
    setup = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    secret = setup.json()["secret"]
    window = {totp_code(secret, clock.now, offset) for offset in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in window)
    for _ in range(3):
        _assert_error(
            await harness.client.post(CONFIRM, json={"code": wrong}, headers=headers),
            400,
            INVALID_CODE,
        )
    right = totp_code(secret, clock.now)
    _assert_locked(await harness.client.post(CONFIRM, json={"code": right}, headers=headers))
    events = await _events(harness, await _user_id(harness, headers))
    assert [name for name, _ in events].count("mfa_failed") == 3
    assert "mfa_enabled" not in [name for name, _ in events]


async def test_an_abandoned_set_up_expires_after_15_minutes(harness: Harness) -> None:
    await harness.create_user("alice")
    clock = freeze(harness)
    headers = await harness.bearer()
    setup = await harness.client.post(SETUP, json={"password": PASSWORD}, headers=headers)
    secret = setup.json()["secret"]
    clock.advance(minutes=15, seconds=1)
    late = await harness.client.post(
        CONFIRM, json={"code": totp_code(secret, clock.now)}, headers=headers
    )
    _assert_error(late, 409, "No MFA setup in progress")


async def test_new_recovery_codes_are_mailed_about(harness: Harness, mailbox: Mailbox) -> None:
    alice = await _enrolled(harness)
    await mailbox.wait_for(1)  # the "on" notice
    response = await harness.client.post(
        RECOVERY, json={"password": PASSWORD}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    notice = (await mailbox.wait_for(2))[1]
    assert "recovery codes" in str(notice["Subject"]).lower()
    assert notice["To"] == "alice@example.com"


async def test_a_password_reset_does_not_lift_a_lock_built_by_wrong_codes(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    """The reset link proves the mailbox, not the second factor: with MFA on, the lock that
    wrong codes built stands (else each reset would buy a fresh batch of guesses)."""
    harness = await make_harness(login_max_failures=3)
    alice = await _enrolled(harness)
    window = {alice.code(offset) for offset in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in window)
    for _ in range(3):
        await mfa_grant(harness, await mfa_token(harness), otp=wrong)
    _assert_locked(await password_step(harness))
    forgot = await harness.client.post("/password/forgot", json={"email": "alice@example.com"})
    assert forgot.status_code == 202
    (mail,) = [m for m in await mailbox.wait_for(2) if "reset" in str(m["Subject"]).lower()]
    body = mail.get_body(("plain",))
    assert body is not None
    link_token = re.search(r"reset-password\?token=([\w-]+)", body.get_content())
    assert link_token is not None
    reset = await harness.client.post(
        "/password/reset",
        json={"token": link_token.group(1), "password": "an entirely new passphrase"},
    )
    assert reset.status_code == 204, reset.text
    _assert_locked(await password_step(harness, password="an entirely new passphrase"))


async def test_concurrent_wrong_codes_cannot_pass_the_five_per_mfa_token(harness: Harness) -> None:
    alice = await _enrolled(harness)
    token = await mfa_token(harness)
    window = {alice.code(offset) for offset in (-1, 0, 1)}
    wrong = [c for c in (f"{n:06d}" for n in range(100000, 100020)) if c not in window][:10]
    answers = await asyncio.gather(*(mfa_grant(harness, token, otp=code) for code in wrong))
    details = [r.json()["detail"] for r in answers]
    assert all(r.status_code == 401 for r in answers), details
    assert details.count(INVALID_CODE) == 5, details
    assert details.count(INVALID_TOKEN) == 5, details
    async with harness.auth.core.sessionmaker() as db:
        failures = await db.scalar(select(MFAChallenge.failures))
    assert failures == 5
