"""Sessions: refresh-token rotation with reuse detection, revocation and the per-request check."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import AuthChange, AuthSession, MFAChallenge, RefreshToken, User
from authdb.errors import InactiveUser, InvalidRefreshToken, NotAuthenticated, NotFound
from authdb.services import audit
from authdb.services.core import ClientInfo, Core
from authdb.tokens import (
    MAX_TOKEN_CHARS,
    AccessClaims,
    InvalidAccessToken,
    UnknownKeyId,
    hash_opaque_token,
    new_opaque_token,
)


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: int


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """A session signed in through a page: ``cookie`` is the secret the session cookie carries."""

    cookie: str
    session_id: int
    max_age: int  # seconds, the session's lifetime


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who a request speaks for: a bearer access token's session, or a browser cookie's."""

    user: User
    session_id: int
    via: Literal["bearer", "cookie"] = "bearer"


# A cookie value we could have minted: new_opaque_token()'s URL-safe alphabet and length.
_COOKIE_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


async def _open(
    core: Core, db: AsyncSession, user: User, client: ClientInfo, cookie_hash: str | None = None
) -> AuthSession:
    now = core.clock()
    session = AuthSession(
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        expires_at=now + session_lifetime(core),
        user_agent=client.stored_user_agent,
        ip_address=client.ip_address,
        cookie_hash=cookie_hash,
    )
    db.add(session)
    await db.flush()
    return session


def session_lifetime(core: Core) -> timedelta:
    """How long a new session lives (``AUTHDB_REFRESH_TOKEN_EXPIRE_DAYS``)."""
    return timedelta(days=core.settings.refresh_token_expire_days)


async def start_session(core: Core, db: AsyncSession, user: User, client: ClientInfo) -> TokenPair:
    """Open an API session (tokens) for a user who just proved who they are."""
    session = await _open(core, db, user, client)
    return _issue(core, db, user.id, session.id, session.created_at)


async def start_browser_session(
    core: Core, db: AsyncSession, user: User, client: ClientInfo
) -> BrowserSession:
    """Open a browser session: a row of ``auth_sessions`` like any other, listed and revoked
    the same way, but carried by a cookie secret (stored as its SHA-256) instead of tokens."""
    cookie = new_opaque_token()
    session = await _open(core, db, user, client, cookie_hash=hash_opaque_token(cookie))
    return BrowserSession(cookie, session.id, int(session_lifetime(core).total_seconds()))


async def authenticate_cookie(core: Core, cookie: str) -> Authenticated:
    """The user behind a session cookie, if its session is still live (one indexed lookup).

    Raises NotAuthenticated for anything else, a malformed value included.
    """
    if not _COOKIE_SHAPE.fullmatch(cookie):
        raise NotAuthenticated
    found = await core.session_reader.cookie_session(hash_opaque_token(cookie), core.clock())
    if found is None:
        raise NotAuthenticated
    user, session_id = found
    return Authenticated(user, session_id, via="cookie")


def _issue(
    core: Core,
    db: AsyncSession,
    user_id: int,
    session_id: int,
    now: datetime,
    refresh: str | None = None,
) -> TokenPair:
    """An access token, and a refresh token (``refresh``, or a new one) stored as a hash."""
    if refresh is None:
        refresh = new_opaque_token()
        db.add(
            RefreshToken(
                session_id=session_id, token_hash=hash_opaque_token(refresh), created_at=now
            )
        )
    access = core.jwt.encode(user_id=user_id, session_id=session_id, now=now)
    lifetime = int(core.jwt.lifetime.total_seconds())
    return TokenPair(access, refresh, lifetime, session_id)


async def refresh(core: Core, token: str, client: ClientInfo) -> TokenPair:
    """Spend ``token`` for a new pair. A spent token coming back means theft: end the session.

    Except within ``refresh_reuse_interval_seconds`` of its rotation: two tabs refreshing at
    once both get the same successor, and the session lives (RFC 9700 4.14.2 allows this).
    """
    now = core.clock()
    token_hash = hash_opaque_token(token)
    successor = new_opaque_token()
    async with core.sessionmaker.begin() as db:
        # One conditional UPDATE is the atomic test-and-set: of two racing requests, one wins;
        # the loser waits for the winner's commit and then finds its sealed successor.
        spent = await db.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == token_hash, RefreshToken.spent_at.is_(None))
            .values(spent_at=now, successor=seal_successor(token, successor))
            .returning(RefreshToken.session_id)
        )
        session_id = spent.scalar_one_or_none()
        if session_id is None:
            pair = await _on_unknown_or_reused(core, db, token, client, now)
        else:
            db.add(
                RefreshToken(
                    session_id=session_id, token_hash=hash_opaque_token(successor), created_at=now
                )
            )
            pair = await _rotate(core, db, session_id, client, now, successor)
    # Raised outside the transaction, so that a reuse's revocation is committed.
    if pair is None:
        raise InvalidRefreshToken
    return pair


def _successor_key(token: str) -> bytes:
    # Derived from the presented token, which the database holds only as a hash: whoever can
    # read the sealed successor must also hold its predecessor.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"authdb refresh successor")
    return hkdf.derive(token.encode())


def seal_successor(token: str, successor: str) -> bytes:
    """``successor`` encrypted (AES-256-GCM) under a key only ``token``'s holder can derive."""
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(_successor_key(token)).encrypt(nonce, successor.encode(), None)


def open_successor(token: str, sealed: bytes) -> str | None:
    """The successor sealed by ``seal_successor`` for ``token``, or None if it does not open."""
    try:
        return AESGCM(_successor_key(token)).decrypt(sealed[:12], sealed[12:], None).decode()
    except (InvalidTag, ValueError):
        return None


async def _rotate(
    core: Core,
    db: AsyncSession,
    session_id: int,
    client: ClientInfo,
    now: datetime,
    successor: str,
) -> TokenPair:
    row = (
        await db.execute(
            select(AuthSession, User)
            .join(User, User.id == AuthSession.user_id)
            .where(AuthSession.id == session_id, AuthSession.live_at(now))
        )
    ).one_or_none()
    if row is None:
        raise InvalidRefreshToken
    session, user = row
    if user.disabled:
        raise InactiveUser
    session.last_used_at = now
    session.ip_address = client.ip_address or session.ip_address
    return _issue(core, db, user.id, session.id, now, successor)


async def _on_unknown_or_reused(
    core: Core, db: AsyncSession, token: str, client: ClientInfo, now: datetime
) -> TokenPair | None:
    """A token that is not live: unknown (None), just rotated (its successor) or stolen."""
    row = await db.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == hash_opaque_token(token))
    )
    if row is None:
        return None
    interval = timedelta(seconds=core.settings.refresh_reuse_interval_seconds)
    if row.spent_at is not None and row.successor is not None and now - row.spent_at <= interval:
        successor = open_successor(token, row.successor)
        if successor is not None:
            return await _rotate(core, db, row.session_id, client, now, successor)
    # RFC 9700 4.14: reuse of a rotated token revokes the whole session (thief's and victim's).
    reused = row.session_id
    session = await db.get(AuthSession, reused)
    if session is not None and session.revoked_at is None:
        session.revoked_at = now
        audit.record(
            db,
            "refresh_token_reuse",
            client=client,
            now=now,
            user_id=session.user_id,
            session_id=session.id,
        )
    return None


async def authenticate(core: Core, access_token: str) -> Authenticated:
    """The user behind a bearer token, if its session is still live (one indexed join)."""
    claims = await decode_access_token(core, access_token)
    user = await core.session_reader.live_user(claims.session_id, claims.user_id, core.clock())
    if user is None:
        raise NotAuthenticated
    return Authenticated(user, claims.session_id)


async def decode_access_token(core: Core, access_token: str) -> AccessClaims:
    """The ids in a valid access token; a token of a key this process has not seen yet (made
    by a rotation elsewhere) is checked again after re-reading the keys. Raises
    NotAuthenticated for any invalid token."""
    try:
        return core.jwt.decode(access_token)
    except UnknownKeyId:
        if core.keyring is None or not await core.keyring.catch_up():
            raise NotAuthenticated from None
    except InvalidAccessToken:
        raise NotAuthenticated from None
    try:
        return core.jwt.decode(access_token)
    except InvalidAccessToken:
        raise NotAuthenticated from None


async def revoke_token(core: Core, token: str, hint: str | None, client: ClientInfo) -> None:
    """End the session that owns ``token``, a refresh token or an access token (RFC 7009 2.1).

    ``hint`` (``"access_token"`` or ``"refresh_token"``) says which kind to look for first. An
    unknown, expired, malformed or already revoked token changes nothing, silently (2.2).
    """
    if len(token) > MAX_TOKEN_CHARS:
        return
    finders = [_refresh_token_session, _access_token_session]
    if hint == "access_token":
        finders.reverse()
    for find in finders:
        session_id = await find(core, token)
        if session_id is not None:
            break
    else:
        return
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        # Conditional: of racing revocations one ends the session and is audited; an expired
        # or already ended session is left as it is.
        ended = await db.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id, AuthSession.live_at(now))
            .values(revoked_at=now)
            .returning(AuthSession.user_id)
        )
        user_id = ended.scalar_one_or_none()
        if user_id is not None:
            audit.record(
                db, "token_revoked", client=client, now=now, user_id=user_id, session_id=session_id
            )


async def _refresh_token_session(core: Core, token: str) -> int | None:
    query = select(RefreshToken.session_id).where(
        RefreshToken.token_hash == hash_opaque_token(token)
    )
    async with core.sessionmaker() as db:
        return await db.scalar(query)


async def _access_token_session(core: Core, token: str) -> int | None:
    try:
        claims = await decode_access_token(core, token)
    except NotAuthenticated:
        return None
    query = select(AuthSession.id).where(
        AuthSession.id == claims.session_id, AuthSession.user_id == claims.user_id
    )
    async with core.sessionmaker() as db:
        return await db.scalar(query)


async def end_replaced_cookie(core: Core, cookie: str) -> None:
    """End the browser session ``cookie`` stands for, if live: a new sign-in in the same
    browser replaces it rather than leaving it alive and unreachable until it expires."""
    if not _COOKIE_SHAPE.fullmatch(cookie):
        return
    async with core.sessionmaker.begin() as db:
        await db.execute(
            update(AuthSession)
            .where(
                AuthSession.cookie_hash == hash_opaque_token(cookie),
                AuthSession.revoked_at.is_(None),
            )
            .values(revoked_at=core.clock())
        )


async def revoke(db: AsyncSession, session_id: int, now: datetime) -> None:
    await db.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke_all(
    db: AsyncSession, user_id: int, now: datetime, *, keep: int | None = None
) -> None:
    """End every session of a user, or every one but ``keep``, and every sign-in of theirs
    still waiting for its second factor (an ``mfa_token``)."""
    query = update(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if keep is not None:
        query = query.where(AuthSession.id != keep)
    await db.execute(query.values(revoked_at=now))
    await db.execute(delete(MFAChallenge).where(MFAChallenge.user_id == user_id))


async def logout(core: Core, auth: Authenticated, client: ClientInfo) -> None:
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        await revoke(db, auth.session_id, now)
        audit.record(
            db, "logout", client=client, now=now, user_id=auth.user.id, session_id=auth.session_id
        )


async def list_live(core: Core, user_id: int) -> list[AuthSession]:
    query = (
        select(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.live_at(core.clock()))
        .order_by(AuthSession.id)
    )
    async with core.sessionmaker() as db:
        return list((await db.scalars(query)).all())


async def end_own(core: Core, auth: Authenticated, session_id: int, client: ClientInfo) -> None:
    """End one of the caller's live sessions; another user's id is indistinguishable from none."""
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        session = await db.scalar(
            select(AuthSession).where(
                AuthSession.id == session_id,
                AuthSession.user_id == auth.user.id,
                AuthSession.live_at(now),
            )
        )
        if session is None:
            raise NotFound("Session not found")
        session.revoked_at = now
        audit.record(
            db,
            "session_revoked",
            client=client,
            now=now,
            user_id=auth.user.id,
            session_id=session_id,
        )


# Announcements of changes (SQLite's auth_changes) kept for processes that have not read them
# yet; one further behind finds a gap and empties its whole cache (authdb.db.session_cache).
KEEP_CHANGES = 10_000


async def prune(core: Core) -> int:
    """Delete sessions that have expired or were revoked; returns how many. Also drops all but
    the last ``KEEP_CHANGES`` rows of ``auth_changes``."""
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        result = await db.execute(
            delete(AuthSession).where(
                or_(AuthSession.expires_at <= now, AuthSession.revoked_at.is_not(None))
            )
        )
        newest = select(func.max(AuthChange.id)).scalar_subquery()
        await db.execute(delete(AuthChange).where(AuthChange.id <= newest - KEEP_CHANGES))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
