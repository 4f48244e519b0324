"""Shared helpers for MFA tests: a frozen clock, enrolment, and the two sign-in steps.

TOTP codes are computed with ``pyotp`` from the secret the API returned, at the time the
app's ``core.clock`` says, so no test depends on the wall clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pyotp

from tests.conftest import PASSWORD, Harness

MFA_GRANT = "urn:authdb:params:oauth:grant-type:mfa"


class FrozenClock:
    """Stands in for ``core.clock``: one aware datetime, moved only by the test."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now if now is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        """Move the clock forward by ``timedelta(**delta)``."""
        self.now += timedelta(**delta)


# The frozen instant lies this far in the past: tests move the clock forward by minutes, and
# PyJWT checks an access token's ``iat`` against the real clock (a future ``iat`` is refused).
FROZEN_LEAD = timedelta(minutes=15)


def freeze(harness: Harness) -> FrozenClock:
    """Fix the app's clock at an instant captured now (less ``FROZEN_LEAD``); returns the
    clock, to move it forward."""
    clock = FrozenClock(datetime.now(UTC) - FROZEN_LEAD)
    harness.auth.core.clock = clock
    return clock


def totp_code(secret: str, at: datetime, offset: int = 0) -> str:
    """The RFC 6238 code of ``secret`` for the step of ``at`` plus ``offset`` steps."""
    return pyotp.TOTP(secret).at(at, counter_offset=offset)


async def enable_mfa(
    harness: Harness, username: str = "alice", password: str = PASSWORD
) -> tuple[str, list[str], dict[str, str]]:
    """Set up and confirm TOTP for ``username`` (code of the app's current step).

    Returns the secret, the 10 recovery codes and the bearer headers used. The confirming
    code spends its step: move the clock on before signing in with a code.
    """
    headers = await harness.bearer(username, password)
    setup = await harness.client.post(
        "/users/me/mfa/totp/setup", json={"password": password}, headers=headers
    )
    assert setup.status_code == 200, setup.text
    secret = str(setup.json()["secret"])
    code = totp_code(secret, harness.auth.core.clock())
    confirm = await harness.client.post(
        "/users/me/mfa/totp/confirm", json={"code": code}, headers=headers
    )
    assert confirm.status_code == 200, confirm.text
    return secret, [str(c) for c in confirm.json()["recovery_codes"]], headers


async def password_step(
    harness: Harness, username: str = "alice", password: str = PASSWORD
) -> httpx.Response:
    """``POST /token`` with the password grant."""
    return await harness.client.post("/token", data={"username": username, "password": password})


async def mfa_token(harness: Harness, username: str = "alice", password: str = PASSWORD) -> str:
    """The ``mfa_token`` a right password opens for a user with MFA on."""
    response = await password_step(harness, username, password)
    assert response.status_code == 403, response.text
    return str(response.json()["mfa_token"])


async def mfa_grant(
    harness: Harness, token: str, *, otp: str | None = None, recovery_code: str | None = None
) -> httpx.Response:
    """``POST /token`` with the MFA grant (fields left out when None)."""
    data = {"grant_type": MFA_GRANT, "mfa_token": token}
    if otp is not None:
        data["otp"] = otp
    if recovery_code is not None:
        data["recovery_code"] = recovery_code
    return await harness.client.post("/token", data=data)
