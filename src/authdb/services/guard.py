"""Counting failed proofs of identity: the account's lockout and the client's budget.

A wrong password at sign-in, a wrong second factor, and a wrong password or code where a
signed-in user confirms a change all count alike, so none of them is an unlimited guessing
oracle. See ``authdb.services.lockout`` for the account's counter and
``authdb.ratelimit`` for the address's budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import NoReturn

from authdb.db.models import User
from authdb.errors import AuthError, IncorrectPassword, InvalidCredentials, TooManyRequests
from authdb.ratelimit import RateLimits, client_key
from authdb.services import audit, lockout
from authdb.services.core import ClientInfo, Core


@asynccontextmanager
async def attempt(
    core: Core, limits: RateLimits, user: User, client: ClientInfo
) -> AsyncIterator[str]:
    """Guard one proof by a known user (a password or a code) before it is checked.

    Holds a place in the client's failure budget while the proof is in flight (429 when it is
    spent) and refuses a locked account before any work, so that a guess made while locked
    is never evaluated. Yields the account's lockout key.
    """
    async with limits.attempt("login_failures", client_key(client, core.settings)):
        yield await admit(core, limits, user, client)


async def admit(core: Core, limits: RateLimits, user: User, client: ClientInfo) -> str:
    """``attempt``'s lock check alone, for a caller already holding the client's place (one
    that learns the user from the proof itself, as a passkey does). Returns the lockout key;
    raises TooManyRequests while the account is locked."""
    key = lockout.lock_key(user, "")
    async with core.sessionmaker() as db:
        retry = await lockout.locked_for(db, key, core.clock())
    if retry is not None:
        await refuse_locked(core, limits, client, user.id, retry)
    return key


async def confirm_password(
    core: Core, limits: RateLimits, user: User, password: str, client: ClientInfo
) -> None:
    """Check a signed-in user's current password under the same guard as a login.

    A wrong one counts as a failed login, for the account's lockout and the client's budget,
    so a stolen access token is no unlimited guessing oracle. Raises IncorrectPassword, or
    TooManyRequests while the account is locked or the client over its budget.
    """
    async with attempt(core, limits, user, client) as key:
        await check_password(core, limits, key, user, password, client)


async def check_password(
    core: Core, limits: RateLimits, key: str, user: User, password: str, client: ClientInfo
) -> None:
    """``confirm_password`` within an ``attempt`` the caller holds (``key`` is its lockout
    key), for a change that needs another proof after the password in the same attempt.

    A right password clears the count of failures, except with MFA on: there only a second
    factor does, or password confirmations would reset the count between guessed codes.
    """
    ok, _ = await core.hasher.verify(password, user.hashed_password)
    if not ok:
        await fail(core, limits, key, client, user.id, IncorrectPassword(), "password_failed")
    async with core.sessionmaker.begin() as db:
        admit = lockout.locked_for if user.mfa_enabled else lockout.admit_success
        retry = await admit(db, key, core.clock())
    if retry is not None:
        raise TooManyRequests(retry)


async def refuse_locked(
    core: Core, limits: RateLimits, client: ClientInfo, user_id: int | None, retry: int
) -> NoReturn:
    """Refuse an attempt on a locked name before hashing; it still spends the address budget."""
    async with core.sessionmaker.begin() as db:
        audit.record(db, "login_locked", client=client, now=core.clock(), user_id=user_id)
    await spend_failure(core, limits, client)
    raise TooManyRequests(retry)


async def fail(
    core: Core,
    limits: RateLimits,
    key: str,
    client: ClientInfo,
    user_id: int | None,
    error: AuthError | None = None,
    event: str = "login_failed",
    reason: str | None = None,
) -> NoReturn:
    """Count a failure against lockout ``key``: ``error`` (401 by default), or 429 if locked
    meanwhile. Audited as ``event`` (and ``lockout`` when this failure sets the lock), with
    ``reason`` for the operator when the client is told less."""
    settings = core.settings
    locked: TooManyRequests | None = None
    async with core.failures_in_flight.counting(key), core.sessionmaker.begin() as db:
        now = core.clock()
        try:
            attempt = await lockout.record_failure(
                db,
                key,
                now,
                max_failures=settings.login_max_failures,
                lockout=timedelta(minutes=settings.login_lockout_minutes),
            )
        except TooManyRequests as exc:
            locked = exc
            audit.record(db, "login_locked", client=client, now=now, user_id=user_id)
        else:
            if reason:
                audit.record(db, event, client=client, now=now, user_id=user_id, reason=reason)
            else:
                audit.record(db, event, client=client, now=now, user_id=user_id)
            if attempt.locks:
                audit.record(db, "lockout", client=client, now=now, user_id=user_id)
    await spend_failure(core, limits, client)
    raise locked or error or InvalidCredentials()


async def spend_failure(core: Core, limits: RateLimits, client: ClientInfo) -> None:
    """Spend one failure of the client's budget (its next attempt meets the 429)."""
    with contextlib.suppress(TooManyRequests):
        await limits.hit("login_failures", client_key(client, core.settings))
