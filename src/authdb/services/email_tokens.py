"""Single-use email tokens (verification and reset): random, stored as hashes, bound to the
address they were mailed to, spent by one conditional UPDATE."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, delete, or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from authdb import links
from authdb.db.models import EmailToken, User
from authdb.errors import InvalidEmailToken
from authdb.names import email_key
from authdb.services.core import Core
from authdb.settings import Settings
from authdb.tokens import hash_opaque_token, new_opaque_token

Purpose = Literal["verify", "reset"]
VERIFY: Purpose = "verify"
RESET: Purpose = "reset"


@dataclass(frozen=True, slots=True)
class Mail:
    """An email to send once the transaction that produced it has committed."""

    to: str
    template: str
    context: dict[str, str] = field(default_factory=dict)


def lifetime(settings: Settings, purpose: Purpose) -> timedelta:
    if purpose == VERIFY:
        return timedelta(hours=settings.verify_token_expire_hours)
    return timedelta(minutes=settings.reset_token_expire_minutes)


def link_mail(
    core: Core, user: User, purpose: Purpose, token: str, *, to: str | None = None
) -> Mail:
    """The email carrying ``token`` as a link to ``PUBLIC_URL`` (never the request's Host), at
    the path where the app mounted the page it opens (``core.links``).

    It goes to the account's address, or to ``to`` (a pending new address to confirm).
    """
    address = to or user.email
    assert address is not None  # only accounts with an address are sent links
    page = core.links.verify if purpose == VERIFY else core.links.reset
    return Mail(
        to=address,
        template=purpose,
        context={
            "username": user.username,
            "token": token,
            "link": f"{links.url(core.settings.public_url, page)}?token={token}",
            "expires": duration(lifetime(core.settings, purpose)),
        },
    )


async def issue(
    core: Core,
    db: AsyncSession,
    user: User,
    purpose: Purpose,
    now: datetime,
    *,
    email: str | None = None,
) -> str:
    """Store a new token's hash and return the token.

    The token is bound to the address it is mailed to: the user's current email, or ``email``
    (a pending new address, for verification only).
    """
    stale: list[ColumnElement[bool]] = [
        EmailToken.used_at.is_not(None),
        EmailToken.expires_at <= now,
    ]
    if purpose == RESET:
        # A new reset link supersedes every earlier one.
        stale.append(EmailToken.purpose == RESET)
    await db.execute(delete(EmailToken).where(EmailToken.user_id == user.id, or_(*stale)))
    token = new_opaque_token()
    db.add(
        EmailToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=hash_opaque_token(token),
            email=email or user.email,
            created_at=now,
            expires_at=now + lifetime(core.settings, purpose),
        )
    )
    return token


def usable(purpose: Purpose, token: str, now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        EmailToken.token_hash == hash_opaque_token(token),
        EmailToken.purpose == purpose,
        EmailToken.used_at.is_(None),
        EmailToken.expires_at > now,
    )


async def consume(
    db: AsyncSession, purpose: Purpose, token: str, now: datetime
) -> tuple[User, str]:
    """Spend a token; return its user and the address it was mailed to, or raise InvalidEmailToken.

    One conditional UPDATE is the test-and-set, so a token works once even under races.
    """
    spent = await db.execute(
        update(EmailToken)
        .where(*usable(purpose, token, now))
        .values(used_at=now)
        .returning(EmailToken.user_id, EmailToken.email)
    )
    row = spent.one_or_none()
    user = await db.get(User, row.user_id) if row is not None else None
    if row is None or user is None or not bound(user, row.email, purpose):
        raise InvalidEmailToken
    return user, row.email


def bound(user: User, token_email: str | None, purpose: Purpose) -> bool:
    """Whether the address a token was mailed to is still the account's address.

    A verification link may also confirm the account's pending new address.
    """
    if token_email is None:
        return False
    key = email_key(token_email)
    if key == user.email_key:
        return True
    return (
        purpose == VERIFY
        and user.pending_email is not None
        and key == email_key(user.pending_email)
    )


def duration(span: timedelta) -> str:
    """``24 hours``, ``1 hour``, ``30 minutes``: how long a link lives, for humans."""
    minutes = int(span.total_seconds() // 60)
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
