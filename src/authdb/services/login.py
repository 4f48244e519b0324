"""The password grant: rate limit, lockout, constant-cost verification, then a new session."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import NoReturn, TypeVar

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import User
from authdb.errors import (
    AuthError,
    EmailNotVerified,
    InactiveUser,
    IncorrectPassword,
    InvalidCredentials,
    InvalidInput,
    TooManyRequests,
)
from authdb.names import has_control_characters
from authdb.ratelimit import RateLimits, client_key
from authdb.services import audit, lockout
from authdb.services.core import ClientInfo, Core
from authdb.services.sessions import (
    BrowserSession,
    TokenPair,
    prune,
    start_browser_session,
    start_session,
)
from authdb.services.users import find_by_login

# What a successful sign-in opens: API tokens, or a browser session.
SessionT = TypeVar("SessionT", TokenPair, BrowserSession)
_Opener = Callable[[Core, AsyncSession, User, ClientInfo], Awaitable[SessionT]]


async def login(
    core: Core, limits: RateLimits, login_name: str, password: str, client: ClientInfo
) -> TokenPair:
    """Exchange a username-or-email and password for tokens.

    Known and unknown names take the same steps (a lookup, a hash, a write), so neither the
    answers nor the work done tell which accounts exist.
    """
    return await _guarded(core, limits, login_name, password, client, start_session)


async def login_browser(
    core: Core, limits: RateLimits, login_name: str, password: str, client: ClientInfo
) -> BrowserSession:
    """``login`` for the sign-in page: the same guards, but a cookie-carried session."""
    return await _guarded(core, limits, login_name, password, client, start_browser_session)


async def _guarded(
    core: Core,
    limits: RateLimits,
    login_name: str,
    password: str,
    client: ClientInfo,
    opener: _Opener[SessionT],
) -> SessionT:
    if has_control_characters(login_name):
        # No account can have such a name; and PostgreSQL refuses NUL in text outright.
        raise InvalidInput("Username contains invalid characters", field="username")
    # Over its failure budget an address gets 429 whatever the password: no oracle. Attempts
    # in flight hold a place, so a burst is cut at the budget too.
    async with limits.attempt("login_failures", client_key(client, core.settings)):
        return await _login(core, limits, login_name, password, client, opener)


async def _login(
    core: Core,
    limits: RateLimits,
    login_name: str,
    password: str,
    client: ClientInfo,
    opener: _Opener[SessionT],
) -> SessionT:
    async with core.sessionmaker() as db:
        user = await find_by_login(db, login_name)
        key = lockout.lock_key(user, login_name)
        retry = await lockout.locked_for(db, key, core.clock())
    user_id = user.id if user is not None else None
    if retry is not None:
        await _locked(core, limits, client, user_id, retry)
    ok, new_hash = await core.hasher.verify(password, user.hashed_password if user else None)
    if not ok or user is None:
        await _fail(core, limits, key, client, user_id)
    return await _succeed(core, limits, key, client, user, new_hash, opener)


async def _succeed(
    core: Core,
    limits: RateLimits,
    key: str,
    client: ClientInfo,
    user: User,
    new_hash: str | None,
    opener: _Opener[SessionT],
) -> SessionT:
    """The password was right: a session, unless a lock stands or the account is refused."""
    pair: SessionT | None = None
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        retry = await lockout.admit_success(db, key, now)
        refusal: AuthError | None = (
            TooManyRequests(retry) if retry is not None else _refusal(core, user)
        )
        if isinstance(refusal, TooManyRequests):
            audit.record(db, "login_locked", client=client, now=now, user_id=user.id)
        elif refusal is not None:
            audit.record(
                db, "login_refused", client=client, now=now, user_id=user.id, reason=refusal.detail
            )
        else:
            changes: dict[str, object] = {"last_login_at": now}
            if new_hash is not None:
                changes["hashed_password"] = new_hash  # upgrade bcrypt or old argon2 parameters
            await db.execute(update(User).where(User.id == user.id).values(**changes))
            pair = await opener(core, db, user, client)
            audit.record(
                db, "login_ok", client=client, now=now, user_id=user.id, session_id=pair.session_id
            )
    # Raised after the commit, so that the audit rows (and the forgiven failures) are kept.
    if refusal is not None:
        if isinstance(refusal, TooManyRequests):
            await _spend_failure(limits, client, core)
        raise refusal
    assert pair is not None
    if secrets.randbelow(core.settings.prune_every_n_logins) == 0:
        await prune(core)
        await _prune_failures(core)
    return pair


async def _prune_failures(core: Core) -> None:
    # A day, or the lock's length if longer: see lockout.prune for why that is safe.
    idle = max(timedelta(days=1), timedelta(minutes=core.settings.login_lockout_minutes))
    async with core.sessionmaker.begin() as db:
        await lockout.prune(db, core.clock(), idle=idle)


def _refusal(core: Core, user: User) -> AuthError | None:
    """Why a user with the right password still may not log in, if they may not."""
    if user.disabled:
        return InactiveUser()
    if core.settings.require_verified_email and not user.is_verified:
        return EmailNotVerified()
    return None


async def _locked(
    core: Core, limits: RateLimits, client: ClientInfo, user_id: int | None, retry: int
) -> NoReturn:
    """Refuse an attempt on a locked name before hashing; it still spends the address budget."""
    async with core.sessionmaker.begin() as db:
        audit.record(db, "login_locked", client=client, now=core.clock(), user_id=user_id)
    await _spend_failure(limits, client, core)
    raise TooManyRequests(retry)


async def confirm_password(
    core: Core, limits: RateLimits, user: User, password: str, client: ClientInfo
) -> None:
    """Check a signed-in user's current password under the same guard as a login.

    A wrong one counts as a failed login, for the account's lockout and the client's budget,
    so a stolen access token is no unlimited guessing oracle. Raises IncorrectPassword, or
    TooManyRequests while the account is locked or the client over its budget.
    """
    async with limits.attempt("login_failures", client_key(client, core.settings)):
        key = lockout.lock_key(user, "")
        async with core.sessionmaker() as db:
            retry = await lockout.locked_for(db, key, core.clock())
        if retry is not None:
            await _locked(core, limits, client, user.id, retry)
        ok, _ = await core.hasher.verify(password, user.hashed_password)
        if not ok:
            await _fail(core, limits, key, client, user.id, IncorrectPassword(), "password_failed")
        async with core.sessionmaker.begin() as db:
            retry = await lockout.admit_success(db, key, core.clock())
    if retry is not None:
        raise TooManyRequests(retry)


async def _fail(
    core: Core,
    limits: RateLimits,
    key: str,
    client: ClientInfo,
    user_id: int | None,
    error: AuthError | None = None,
    event: str = "login_failed",
) -> NoReturn:
    """Count a wrong password: ``error`` (401 by default), or 429 if locked meanwhile."""
    settings = core.settings
    locked: TooManyRequests | None = None
    async with core.sessionmaker.begin() as db:
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
            audit.record(db, event, client=client, now=now, user_id=user_id)
            if attempt.locks:
                audit.record(db, "lockout", client=client, now=now, user_id=user_id)
    await _spend_failure(limits, client, core)
    raise locked or error or InvalidCredentials()


async def _spend_failure(limits: RateLimits, client: ClientInfo, core: Core) -> None:
    # This failure still gets its own answer; the address's next attempt meets the 429.
    with contextlib.suppress(TooManyRequests):
        await limits.hit("login_failures", client_key(client, core.settings))
