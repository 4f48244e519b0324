"""The audit trail of security events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import MAX_ID, AuditEvent, User
from authdb.errors import NotFound
from authdb.services.core import ClientInfo, Core
from authdb.services.users import find_by_login


def record(
    db: AsyncSession,
    event: str,
    *,
    client: ClientInfo | None,
    now: datetime,
    user_id: int | None = None,
    actor_id: int | None = None,
    **detail: object,
) -> None:
    """Add an event to the caller's transaction. ``detail`` must never hold a secret."""
    client = client or ClientInfo()
    db.add(
        AuditEvent(
            created_at=now,
            event=event,
            user_id=user_id,
            actor_id=actor_id,
            ip_address=client.ip_address,
            user_agent=(client.user_agent or "")[:512] or None,
            detail=detail or None,
        )
    )


async def list_events(
    core: Core,
    *,
    user_id: int | None = None,
    since: datetime | None = None,
    limit: int = 1000,
    latest: bool = False,
) -> list[AuditEvent]:
    """Events, oldest first, optionally for one user or since a time.

    ``limit`` keeps the oldest events, or with ``latest`` the newest ones (still printed
    oldest first), which is what someone looking at recent activity wants.
    """
    query = select(AuditEvent).order_by(AuditEvent.id.desc() if latest else AuditEvent.id)
    if user_id is not None:
        query = query.where(AuditEvent.user_id == user_id)
    if since is not None:
        query = query.where(AuditEvent.created_at >= since)
    async with core.sessionmaker() as db:
        events = list((await db.scalars(query.limit(limit))).all())
    return events[::-1] if latest else events


async def subject_id(core: Core, who: str) -> int:
    """The user id that ``who`` (a username, an email or an id) names in the trail.

    A name is looked up among current accounts; an id is also accepted when only the trail
    still knows it, because events outlive deleted accounts. Raises NotFound otherwise.
    """
    async with core.sessionmaker() as db:
        user = await find_by_login(db, who)
        if user is not None:
            return user.id
        # A number past the id range cannot name anyone (and would overflow the query).
        if who.isascii() and who.isdigit() and len(who) < 20 and int(who) <= MAX_ID:
            user_id = int(who)
            known = await db.scalar(select(User.id).where(User.id == user_id))
            if known is None:
                known = await db.scalar(
                    select(AuditEvent.user_id).where(AuditEvent.user_id == user_id).limit(1)
                )
            if known is not None:
                return user_id
    raise NotFound(f"no user {who!r}")
