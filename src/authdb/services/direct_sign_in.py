"""A password sign-in's common case on the database's native path (authdb.db.sign_in_store).

The lookup before the hash is one native read; a right password with nothing else to do (no
second factor, no rehash, no refusal) opens its session in one native transaction that writes
what the ORM path would: the counter forgiven, ``last_login_at`` stamped, the session and its
refresh token (or cookie hash), and ``login_ok`` chained into the audit trail. After the commit
the event reaches the log, the subscribers and the application's callbacks as any other does.
Anything else (MFA, a rehash, a refusal, a lock found at commit) is left to the ORM path in
authdb.services.login.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

from authdb.db.models import User
from authdb.db.session_reader import detached_user
from authdb.db.sign_in_store import NewSession
from authdb.names import login_key
from authdb.services import audit, audit_chain, lockout
from authdb.services.core import ClientInfo, Core
from authdb.services.sessions import BrowserSession, TokenPair, session_lifetime
from authdb.tokens import hash_opaque_token, new_opaque_token

# Why the native transaction wrote nothing: a lock stands, or the user's row is gone.
NotOpened = Literal["locked", "gone"]
SessionT = TypeVar("SessionT", TokenPair, BrowserSession)


async def subject(
    core: Core, login_name: str, now: datetime
) -> tuple[User | None, str, int | None]:
    """The user ``login_name`` names (detached; None if nobody), the lockout counter the
    attempt counts against, and the seconds until that counter's lock ends (None: no lock)."""
    name_key = lockout.lock_key(None, login_name)
    found = await core.sign_in.subject(login_key(login_name), name_key, now)
    user = None if found.user is None else detached_user(found.user)
    key = lockout.lock_key(user, login_name)
    until = found.locked_until
    retry = None if until is None or until <= now else math.ceil((until - now).total_seconds())
    return user, key, retry


async def api_session(
    core: Core, user: User, key: str, client: ClientInfo
) -> TokenPair | NotOpened:
    """Tokens for ``user``, whose password was just proved, in one native transaction."""
    refresh = new_opaque_token()
    now = core.clock()
    new = _new_session(core, user, key, client, now, refresh_hash=hash_opaque_token(refresh))
    lifetime = int(core.jwt.lifetime.total_seconds())

    def pair(session_id: int) -> TokenPair:
        access = core.jwt.encode(user_id=user.id, session_id=session_id, now=now)
        return TokenPair(access, refresh, lifetime, session_id)

    return await _commit(core, user, client, new, pair)


async def browser_session(
    core: Core, user: User, key: str, client: ClientInfo
) -> BrowserSession | NotOpened:
    """A cookie-carried session for ``user``, in one native transaction."""
    cookie = new_opaque_token()
    new = _new_session(core, user, key, client, core.clock(), cookie_hash=hash_opaque_token(cookie))
    max_age = int(session_lifetime(core).total_seconds())
    return await _commit(core, user, client, new, lambda sid: BrowserSession(cookie, sid, max_age))


def _new_session(
    core: Core, user: User, key: str, client: ClientInfo, now: datetime, **secret: str
) -> NewSession:
    return NewSession(
        user_id=user.id,
        lock_key=key,
        now=now,
        expires_at=now + session_lifetime(core),
        user_agent=client.stored_user_agent,
        ip_address=client.ip_address,
        **secret,
    )


async def _commit(
    core: Core,
    user: User,
    client: ClientInfo,
    new: NewSession,
    seal: Callable[[int], SessionT],
) -> SessionT | NotOpened:
    """Write ``new``; ``seal`` makes what the client gets from the session id, inside the
    transaction, so that a failure there (no usable signing key) writes nothing."""
    sealed: list[SessionT] = []
    events: list[audit.SecurityEvent] = []

    def finish(session_id: int, seq: int, prev: str | None) -> list[dict[str, Any]]:
        sealed.append(seal(session_id))
        # As login.open_session records it: the session, and no second factor.
        event = audit.event_of(
            "login_ok", client=client, now=new.now, user_id=user.id, session_id=session_id, mfa=None
        )
        events.append(event)
        return audit_chain.chained([audit.row_of(event)], seq, prev)

    opened = await core.sign_in.commit(new, finish)
    if isinstance(opened, str):
        return opened
    audit.announce(events)
    if core.hooks is not None:
        # The callbacks' task loads the user as it now stands: a change committed while the
        # password was checked must show, as on the ORM path.
        core.hooks.committed("login_ok", user.id, client, events[0].detail)
    return sealed[0]
