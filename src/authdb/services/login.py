"""The password grant: rate limit, lockout, constant-cost verification, then a new session."""

from __future__ import annotations

import contextlib
import secrets
from datetime import timedelta

from sqlalchemy import update

from authdb.db.models import User
from authdb.errors import EmailNotVerified, InactiveUser, InvalidCredentials, TooManyRequests
from authdb.ratelimit import RateLimits
from authdb.services import audit, lockout
from authdb.services.core import ClientInfo, Core
from authdb.services.sessions import TokenPair, prune, start_session
from authdb.services.users import find_by_login


async def login(
    core: Core, limits: RateLimits, login_name: str, password: str, client: ClientInfo
) -> TokenPair:
    """Exchange a username-or-email and password for tokens."""
    address = client.ip_address or "unknown"
    # Over its failure budget an address gets 429 whatever the password: no oracle.
    await limits.check("login_failures", address)
    async with core.sessionmaker() as db:
        user = await find_by_login(db, login_name)
        key = lockout.lock_key(user, login_name)
        try:
            await lockout.check(db, key, core.clock())
        except TooManyRequests:
            await _audit(core, "login_locked", client, user.id if user else None)
            raise
        hashed = user.hashed_password if user is not None else None
    ok, new_hash = await core.hasher.verify(password, hashed)
    if not ok or user is None:
        await _fail(core, limits, key, client, user.id if user else None)
        raise InvalidCredentials
    if user.disabled:
        raise InactiveUser
    if core.settings.require_verified_email and not user.is_verified:
        raise EmailNotVerified
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        await lockout.reset(db, key)
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
    return pair


async def _fail(
    core: Core, limits: RateLimits, key: str, client: ClientInfo, user_id: int | None
) -> None:
    settings = core.settings
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        locked = await lockout.record_failure(
            db,
            key,
            now,
            max_failures=settings.login_max_failures,
            lockout=timedelta(minutes=settings.login_lockout_minutes),
        )
        audit.record(db, "login_failed", client=client, now=now, user_id=user_id)
        if locked:
            audit.record(db, "lockout", client=client, now=now, user_id=user_id)
    # This failure still answers 401; the next attempt meets the 429.
    with contextlib.suppress(TooManyRequests):
        await limits.hit("login_failures", client.ip_address or "unknown")


async def _audit(core: Core, event: str, client: ClientInfo, user_id: int | None) -> None:
    async with core.sessionmaker.begin() as db:
        audit.record(db, event, client=client, now=core.clock(), user_id=user_id)
