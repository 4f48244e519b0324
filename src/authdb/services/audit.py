"""The audit trail of security events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import AuditEvent
from authdb.services.core import ClientInfo, Core


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
    core: Core, *, user_id: int | None = None, since: datetime | None = None, limit: int = 1000
) -> list[AuditEvent]:
    """Events, oldest first, optionally for one user or since a time."""
    query = select(AuditEvent).order_by(AuditEvent.id)
    if user_id is not None:
        query = query.where(AuditEvent.user_id == user_id)
    if since is not None:
        query = query.where(AuditEvent.created_at >= since)
    async with core.sessionmaker() as db:
        return list((await db.scalars(query.limit(limit))).all())
