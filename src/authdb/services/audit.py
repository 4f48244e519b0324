"""The audit trail of security events, and the subscribers told of them once committed.

``record`` adds an event to the caller's transaction. When that transaction commits, each
subscriber (log lines, metrics) gets a :class:`SecurityEvent`, and the application's callbacks
of the session's ``Auth`` (authdb.services.hooks) are scheduled; a transaction that rolls back
tells nobody, so no one hears of an event the trail does not hold.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from authdb.db.models import MAX_ID, AuditEvent, User
from authdb.errors import NotFound

# audit_chain is imported for its session hooks: they give each recorded event its place in
# the hash chain when the transaction commits.
from authdb.services import (
    audit_chain,  # noqa: F401
    hooks,
)
from authdb.services.core import ClientInfo, Core
from authdb.services.users import find_by_login

log = logging.getLogger("authdb.audit")

# Session.info key of the events recorded in the session's current transaction.
_PENDING = "authdb_pending_events"


@dataclass(frozen=True)
class SecurityEvent:
    """A committed audit event, as subscribers see it (``detail`` never holds a secret)."""

    name: str
    time: datetime
    user_id: int | None
    actor_id: int | None
    ip_address: str | None
    user_agent: str | None
    detail: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[SecurityEvent], None]
_subscribers: list[Subscriber] = []


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Call ``subscriber`` with every event of this process once its transaction commits.

    It runs in the committing task and must be quick and not block; an exception it raises
    is logged and otherwise ignored. Returns a function that unsubscribes it.
    """
    _subscribers.append(subscriber)

    def unsubscribe() -> None:
        if subscriber in _subscribers:
            _subscribers.remove(subscriber)

    return unsubscribe


def _log_line(item: SecurityEvent) -> None:
    """One INFO line on ``authdb.audit``: ``login_ok user=3 ip=... ua="..." reason=...``;
    the fields also ride along as ``extra`` for JSON logs (``authdb.logs``)."""
    fields = {
        "user": item.user_id,
        "actor": item.actor_id,
        "ip": item.ip_address,
        "ua": item.user_agent,
        **item.detail,
    }
    text = " ".join(
        f"{key}={json.dumps(value, ensure_ascii=False) if isinstance(value, str) else value}"
        for key, value in fields.items()
        if value is not None
    )
    extra = {
        "event": item.name,
        "user_id": item.user_id,
        "actor_id": item.actor_id,
        "ip_address": item.ip_address,
        "user_agent": item.user_agent,
        "detail": item.detail or None,
    }
    log.info("%s %s", item.name, text, extra=extra)


@orm_event.listens_for(Session, "after_commit")
def _announce(session: Session) -> None:
    announce(session.info.pop(_PENDING, []))
    # The application's callbacks (@auth.on), as tasks: nothing here waits for them.
    hooks.announce(session)


def announce(events: list[SecurityEvent]) -> None:
    """Tell the log and the subscribers of ``events``, committed (in commit order)."""
    for item in events:
        if log.isEnabledFor(logging.INFO):
            _log_line(item)
        for subscriber in list(_subscribers):
            try:
                subscriber(item)
            except Exception:
                log.exception("a subscriber to security events failed on %s", item.name)


@orm_event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    # Runs after after_commit; a rollback or a close without commit ends here with events
    # still pending: they never happened.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
        hooks.forget(session)


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
    """Add an event to the caller's transaction. ``detail`` must never hold a secret.

    The row is inserted, chained to the trail's head, when the transaction commits
    (authdb.services.audit_chain); until then queries in the transaction do not see it.
    """
    announced = event_of(
        event, client=client, now=now, user_id=user_id, actor_id=actor_id, **detail
    )
    db.add(AuditEvent(**row_of(announced)))
    db.sync_session.info.setdefault(_PENDING, []).append(announced)
    hooks.note(db.sync_session, event, user_id, client or ClientInfo(), detail)


def event_of(
    event: str,
    *,
    client: ClientInfo | None,
    now: datetime,
    user_id: int | None = None,
    actor_id: int | None = None,
    **detail: object,
) -> SecurityEvent:
    """The event as ``record`` stores and announces it (the user agent cut to 512 characters)."""
    client = client or ClientInfo()
    return SecurityEvent(
        event, now, user_id, actor_id, client.ip_address, client.stored_user_agent, detail
    )


def row_of(item: SecurityEvent) -> dict[str, Any]:
    """The ``audit_events`` columns of ``item``, before chaining (no ``detail``: None)."""
    return {
        "created_at": item.time,
        "event": item.name,
        "user_id": item.user_id,
        "actor_id": item.actor_id,
        "ip_address": item.ip_address,
        "user_agent": item.user_agent,
        "detail": dict(item.detail) or None,
    }


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
