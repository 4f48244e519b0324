"""The password grant: rate limit, lockout, constant-cost verification, then a new session."""

from __future__ import annotations

import contextlib
import secrets
from datetime import timedelta

from sqlalchemy import update

from authdb.db.models import User
from authdb.errors import (
    AuthError,
    EmailNotVerified,
    InactiveUser,
    InvalidCredentials,
    InvalidInput,
    TooManyRequests,
)
from authdb.names import has_control_characters
from authdb.ratelimit import RateLimits
from authdb.services import audit, lockout
from authdb.services.core import ClientInfo, Core
from authdb.services.sessions import TokenPair, prune, start_session
from authdb.services.users import find_by_login


async def login(
    core: Core, limits: RateLimits, login_name: str, password: str, client: ClientInfo
) -> TokenPair:
    """Exchange a username-or-email and password for tokens."""
    if has_control_characters(login_name):
        # No account can have such a name; and PostgreSQL refuses NUL in text outright.
        raise InvalidInput("Username contains invalid characters")
    address = client.ip_address or "unknown"
    # Over its failure budget an address gets 429 whatever the password: no oracle.
    await limits.check("login_failures", address)
    user, attempt = await _admit(core, login_name, client)
    if isinstance(attempt, TooManyRequests):
        # A refused attempt is a failed login too: hammering a locked name spends the budget.
        await _spend_failure(limits, address)
        raise attempt
    hashed = user.hashed_password if user is not None else None
    ok, new_hash = await core.hasher.verify(password, hashed)
    if not ok or user is None:
        await _fail(core, limits, attempt, client, user.id if user is not None else None)
        raise InvalidCredentials
    refusal = _refusal(core, user)
    if refusal is not None:
        await _refuse(core, attempt, client, user, refusal)
        raise refusal
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        await lockout.forgive(db, attempt.key)
        changes: dict[str, object] = {"last_login_at": now}
        if new_hash is not None:
            changes["hashed_password"] = new_hash  # upgrade bcrypt or old argon2 parameters
        await db.execute(update(User).where(User.id == user.id).values(**changes))
        pair = await start_session(core, db, user, client)
        audit.record(
            db, "login_ok", client=client, now=now, user_id=user.id, session_id=pair.session_id
        )
    if secrets.randbelow(core.settings.prune_every_n_logins) == 0:
        await prune(core)
        await _prune_failures(core)
    return pair


async def _prune_failures(core: Core) -> None:
    # A day, or the lock's length if longer: see lockout.prune for why that is safe.
    idle = max(timedelta(days=1), timedelta(minutes=core.settings.login_lockout_minutes))
    async with core.sessionmaker.begin() as db:
        await lockout.prune(db, core.clock(), idle=idle)


async def _admit(
    core: Core, login_name: str, client: ClientInfo
) -> tuple[User | None, lockout.Attempt | TooManyRequests]:
    """Look the name up and count the attempt, or say (and audit) why it may not go ahead.

    Known and unknown names take the same steps (a lookup, a counted attempt, later a hash
    and a write), so neither the answers nor their timing tell which accounts exist.
    """
    settings = core.settings
    # The refusal is returned, not raised, so that its audit row is committed with the rest.
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        user = await find_by_login(db, login_name)
        try:
            attempt: lockout.Attempt | TooManyRequests = await lockout.begin_attempt(
                db,
                lockout.lock_key(user, login_name),
                now,
                max_failures=settings.login_max_failures,
                lockout=timedelta(minutes=settings.login_lockout_minutes),
            )
        except TooManyRequests as exc:
            attempt = exc
            user_id = user.id if user is not None else None
            audit.record(db, "login_locked", client=client, now=now, user_id=user_id)
    return user, attempt


def _refusal(core: Core, user: User) -> AuthError | None:
    """Why a user with the right password still may not log in, if they may not."""
    if user.disabled:
        return InactiveUser()
    if core.settings.require_verified_email and not user.is_verified:
        return EmailNotVerified()
    return None


async def _refuse(
    core: Core, attempt: lockout.Attempt, client: ClientInfo, user: User, error: AuthError
) -> None:
    """The password was right, so the run of failures ends, though the login is refused."""
    async with core.sessionmaker.begin() as db:
        await lockout.forgive(db, attempt.key)
        audit.record(
            db,
            "login_refused",
            client=client,
            now=core.clock(),
            user_id=user.id,
            reason=error.detail,
        )


async def _fail(
    core: Core,
    limits: RateLimits,
    attempt: lockout.Attempt,
    client: ClientInfo,
    user_id: int | None,
) -> None:
    """Record a wrong password; the attempt itself was counted before the hash was checked."""
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        audit.record(db, "login_failed", client=client, now=now, user_id=user_id)
        if attempt.locks:
            audit.record(db, "lockout", client=client, now=now, user_id=user_id)
    await _spend_failure(limits, client.ip_address or "unknown")


async def _spend_failure(limits: RateLimits, address: str) -> None:
    # This failure still gets its own answer; the address's next attempt meets the 429.
    with contextlib.suppress(TooManyRequests):
        await limits.hit("login_failures", address)
