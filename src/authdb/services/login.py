"""Sign-in: rate limit, lockout, constant-cost password check, the second factor when MFA is
on, then a new session."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import MFAChallenge, User
from authdb.errors import (
    AuthError,
    EmailNotVerified,
    InactiveUser,
    InvalidInput,
    InvalidMFAToken,
    MFALoginFailed,
    MFARequired,
    TooManyRequests,
)
from authdb.names import has_control_characters
from authdb.ratelimit import RateLimits, client_key
from authdb.services import audit, lockout, mfa
from authdb.services import direct_sign_in as direct
from authdb.services.core import ClientInfo, Core
from authdb.services.guard import attempt, fail, refuse_locked, spend_failure
from authdb.services.passkey_challenges import prune_spent_challenges
from authdb.services.sessions import (
    BrowserSession,
    TokenPair,
    prune,
    start_browser_session,
    start_session,
)

# What a successful sign-in opens: API tokens, or a browser session.
SessionT = TypeVar("SessionT", TokenPair, BrowserSession)
Opener = Callable[[Core, AsyncSession, User, ClientInfo], Awaitable[SessionT]]
# The same on the native path (authdb.services.direct_sign_in), given the lockout counter.
DirectOpener = Callable[[Core, User, str, ClientInfo], Awaitable[SessionT | direct.NotOpened]]


async def login(
    core: Core, limits: RateLimits, login_name: str, password: str, client: ClientInfo
) -> TokenPair:
    """Exchange a username-or-email and password for tokens.

    Known and unknown names take the same steps (a lookup, a hash, a write), so neither the
    answers nor the work done tell which accounts exist.
    """
    return await _guarded(
        core, limits, login_name, password, client, (start_session, direct.api_session)
    )


async def login_browser(
    core: Core, limits: RateLimits, login_name: str, password: str, client: ClientInfo
) -> BrowserSession:
    """``login`` for the sign-in page: the same guards, but a cookie-carried session."""
    openers = (start_browser_session, direct.browser_session)
    return await _guarded(core, limits, login_name, password, client, openers)


async def _guarded(
    core: Core,
    limits: RateLimits,
    login_name: str,
    password: str,
    client: ClientInfo,
    openers: tuple[Opener[SessionT], DirectOpener[SessionT]],
) -> SessionT:
    if has_control_characters(login_name):
        # No account can have such a name; and PostgreSQL refuses NUL in text outright.
        raise InvalidInput("Username contains invalid characters", field="username")
    # Over its failure budget an address gets 429 whatever the password: no oracle. Attempts
    # in flight hold a place, so a burst is cut at the budget too.
    async with limits.attempt("login_failures", client_key(client, core.settings)):
        return await _login(core, limits, login_name, password, client, openers)


async def _login(
    core: Core,
    limits: RateLimits,
    login_name: str,
    password: str,
    client: ClientInfo,
    openers: tuple[Opener[SessionT], DirectOpener[SessionT]],
) -> SessionT:
    user, key, retry = await direct.subject(core, login_name, core.clock())
    user_id = user.id if user is not None else None
    if retry is not None:
        await refuse_locked(core, limits, client, user_id, retry)
    ok, new_hash = await core.hasher.verify(password, user.hashed_password if user else None)
    if not ok or user is None:
        await fail(core, limits, key, client, user_id)
    opener, direct_opener = openers
    if new_hash is None and not user.mfa_enabled and account_refusal(core, user) is None:
        await core.failures_in_flight.settled(key)  # failures checked before this one first
        opened = await direct_opener(core, user, key, client)
        if opened == "gone":
            # Deleted while its password was checked: as if it had never been there.
            await fail(core, limits, key, client, None)
        if not isinstance(opened, str):
            await maybe_prune(core)
            return opened
        # A lock stands: the ORM path below refuses the attempt and records why.
    return await _succeed(core, limits, key, client, user, new_hash, opener)


async def _succeed(
    core: Core,
    limits: RateLimits,
    key: str,
    client: ClientInfo,
    user: User,
    new_hash: str | None,
    opener: Opener[SessionT],
) -> SessionT:
    """The password was right: a session, unless a lock stands, the account is refused, or
    a second factor is due (then MFARequired with a new ``mfa_token``)."""
    pair: SessionT | None = None
    mfa_token: str | None = None
    methods: list[str] = []
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        # With MFA on, a right password alone forgives no failures: else it would reset the
        # count between batches of guessed codes.
        check = lockout.locked_for if user.mfa_enabled else lockout.admit_success
        retry = await check(db, key, now)
        refusal = refusal_or_lock(core, user, retry)
        if refusal is not None:
            audit_refusal(db, refusal, client, now, user.id)
        else:
            if new_hash is not None:
                # Upgrade bcrypt or old argon2 parameters: this proves the password either way.
                await db.execute(
                    update(User).where(User.id == user.id).values(hashed_password=new_hash)
                )
            if user.mfa_enabled:
                mfa_token = await mfa.start_challenge(db, user.id, now)
                methods = await mfa.methods(db, user, passkeys=core.features.passkeys)
                audit.record(db, "login_mfa_required", client=client, now=now, user_id=user.id)
            else:
                pair = await open_session(core, db, user, client, opener, now)
    session = await settle(core, limits, client, refusal, (mfa_token, methods), pair)
    await maybe_prune(core)
    return session


async def settle(
    core: Core,
    limits: RateLimits,
    client: ClientInfo,
    refusal: AuthError | None,
    challenge: tuple[str | None, list[str]],
    pair: SessionT | None,
) -> SessionT:
    """A sign-in transaction's verdict, given after its commit so that its audit rows (and the
    forgiven failures) are kept: raises ``refusal`` (a lock also spends the address's budget)
    or MFARequired for ``challenge`` (mfa_token, methods); else returns the session."""
    if refusal is not None:
        if isinstance(refusal, TooManyRequests):
            await spend_failure(core, limits, client)
        raise refusal
    mfa_token, methods = challenge
    if mfa_token is not None:
        raise MFARequired(mfa_token, methods)
    assert pair is not None
    return pair


def refusal_or_lock(core: Core, user: User, retry: int | None) -> AuthError | None:
    return TooManyRequests(retry) if retry is not None else account_refusal(core, user)


def audit_refusal(
    db: AsyncSession, refusal: AuthError, client: ClientInfo, now: datetime, user_id: int
) -> None:
    if isinstance(refusal, TooManyRequests):
        audit.record(db, "login_locked", client=client, now=now, user_id=user_id)
    else:
        audit.record(
            db, "login_refused", client=client, now=now, user_id=user_id, reason=refusal.detail
        )


async def open_session(
    core: Core,
    db: AsyncSession,
    user: User,
    client: ClientInfo,
    opener: Opener[SessionT],
    now: datetime,
    mfa_method: str | None = None,
    passkey_id: int | None = None,
    provider: str | None = None,
) -> SessionT:
    """The sign-in succeeds: stamp it, open the session, audit ``login_ok`` (with
    the passkey or the provider used, if one was)."""
    await db.execute(update(User).where(User.id == user.id).values(last_login_at=now))
    pair = await opener(core, db, user, client)
    # The second factor used, if any ("totp" or "recovery_code"); null for a password alone.
    audit.record(
        db,
        "login_ok",
        client=client,
        now=now,
        user_id=user.id,
        session_id=pair.session_id,
        mfa=mfa_method,
        **_used(passkey_id=passkey_id, provider=provider),
    )
    return pair


def _used(**means: object) -> dict[str, Any]:
    """The means of a sign-in worth recording: those given."""
    return {name: value for name, value in means.items() if value is not None}


async def maybe_prune(core: Core) -> None:
    if secrets.randbelow(core.settings.prune_every_n_logins) == 0:
        await prune(core)
        await _prune_failures(core)


# --- the second factor ----------------------------------------------------------------------------


async def login_mfa(
    core: Core,
    limits: RateLimits,
    mfa_token: str,
    client: ClientInfo,
    *,
    otp: str | None = None,
    recovery_code: str | None = None,
) -> TokenPair:
    """Finish a sign-in that answered MFARequired: the ``mfa_token`` and a TOTP code (``otp``)
    or a recovery code give the usual tokens.

    Raises InvalidMFAToken (401) for an unknown, used or expired token or one past 5 wrong
    codes; MFALoginFailed (401) for a wrong code, which counts as a failed login for the
    account's lockout; TooManyRequests (429) while the account is locked or the client over
    its budget; InactiveUser or EmailNotVerified (400) as a password login would.
    """
    return await _second_factor(core, limits, mfa_token, client, otp, recovery_code, start_session)


async def login_mfa_browser(
    core: Core,
    limits: RateLimits,
    mfa_token: str,
    client: ClientInfo,
    *,
    otp: str | None = None,
    recovery_code: str | None = None,
) -> BrowserSession:
    """``login_mfa`` for the sign-in page: the same checks, but a cookie-carried session."""
    return await _second_factor(
        core, limits, mfa_token, client, otp, recovery_code, start_browser_session
    )


async def _second_factor(
    core: Core,
    limits: RateLimits,
    mfa_token: str,
    client: ClientInfo,
    otp: str | None,
    recovery_code: str | None,
    opener: Opener[SessionT],
) -> SessionT:
    challenge, user = await mfa_challenge(core, mfa_token)
    async with attempt(core, limits, user, client) as key:
        refusal = account_refusal(core, user)
        if refusal is not None:
            raise refusal
        async with core.sessionmaker.begin() as db:
            reserved = await mfa.reserve_attempt(db, challenge.id, core.clock())
        if not reserved:
            raise InvalidMFAToken  # its attempts are used up (concurrent guesses included)
        pair = await _complete(core, challenge.id, user, key, client, otp, recovery_code, opener)
        if pair is None:
            await fail(core, limits, key, client, user.id, MFALoginFailed(), "mfa_failed")
    await maybe_prune(core)
    return pair


async def mfa_challenge(core: Core, mfa_token: str) -> tuple[MFAChallenge, User]:
    """The open challenge and its user, or InvalidMFAToken."""
    async with core.sessionmaker() as db:
        challenge = await mfa.find_challenge(db, mfa_token, core.clock())
        user = await db.get(User, challenge.user_id) if challenge is not None else None
    if challenge is None or user is None or not user.mfa_enabled:
        raise InvalidMFAToken
    return challenge, user


async def _complete(
    core: Core,
    challenge_id: int,
    user: User,
    key: str,
    client: ClientInfo,
    otp: str | None,
    recovery_code: str | None,
    opener: Opener[SessionT],
) -> SessionT | None:
    """Spend the factor and the challenge and open the session, all in one transaction; None
    when the factor is wrong (nothing is spent)."""
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        method = await mfa.verify_factor(
            core, db, user.id, otp=otp, recovery_code=recovery_code, now=now
        )
        if method is None:
            return None
        # Raising inside the transaction rolls the spent factor back.
        if not await mfa.spend_challenge(db, challenge_id, now):
            raise InvalidMFAToken  # a concurrent request finished (or killed) it first
        retry = await lockout.admit_success(db, key, now)
        if retry is not None:
            raise TooManyRequests(retry)
        if method == mfa.METHOD_RECOVERY_CODE:
            audit.record(db, "mfa_recovery_code_used", client=client, now=now, user_id=user.id)
        return await open_session(core, db, user, client, opener, now, mfa_method=method)


async def _prune_failures(core: Core) -> None:
    # A day, or the lock's length if longer: see lockout.prune for why that is safe.
    idle = max(timedelta(days=1), timedelta(minutes=core.settings.login_lockout_minutes))
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        await lockout.prune(db, now, idle=idle)
        await mfa.prune_challenges(db, now)
        await prune_spent_challenges(db, now)


def account_refusal(core: Core, user: User) -> AuthError | None:
    """Why a user with the right password still may not log in, if they may not."""
    if user.disabled:
        return InactiveUser()
    if core.settings.require_verified_email and not user.is_verified:
        return EmailNotVerified()
    return None
