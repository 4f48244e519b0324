"""A person's own security timeline: which audit events they see, and in what shape.

The audit trail is written for operators; a user sees only the events of their own account
that mean something to a person, each with a few whitelisted detail fields. Anything else an
event may carry (hash-chain fields, counters, internal reasons) never leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from authdb.db.models import AuditEvent
from authdb.devices import device_name
from authdb.services.core import CLI_CLIENT, Core

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

# Event name -> the detail fields shown with it. Events not listed are never shown.
SHOWN: dict[str, tuple[str, ...]] = {
    # The account itself
    "registered": (),
    "user_created": (),
    "email_verified": (),
    "email_changed": (),
    "account_updated": ("fields",),
    "admin_user_updated": ("fields",),
    # Signing in: ``mfa`` is the second factor used (totp, recovery_code, webauthn) or null
    "login_ok": ("session_id", "mfa", "passkey_id"),
    "login_mfa_required": ("passkey_id",),
    "login_failed": (),
    "mfa_failed": (),
    "passkey_failed": (),
    "login_refused": ("reason",),
    "login_locked": (),
    "lockout": (),
    # Password
    "password_changed": ("session_id",),
    "password_reset_requested": (),
    "password_reset": (),
    # Second factor and passkeys
    "mfa_enabled": ("method",),
    "mfa_disabled": ("method",),
    "mfa_reset": (),
    "mfa_recovery_codes_replaced": (),
    "mfa_recovery_code_used": (),
    "passkey_registered": ("passkey_id",),
    "passkey_deleted": ("passkey_id",),
    "passkey_counter_regressed": ("passkey_id",),
    # Sessions ended
    "logout": ("session_id",),
    "session_revoked": ("session_id",),
    "token_revoked": ("session_id",),
    "refresh_token_reuse": ("session_id",),
}

DetailValue = str | int | bool | list[str] | None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event as its subject sees it. ``ip_address`` and ``device`` are None for changes an
    administrator made (their address is not the user's to see)."""

    id: int
    time: datetime
    event: str
    ip_address: str | None
    device: str | None
    detail: dict[str, DetailValue] = field(default_factory=dict)


async def list_own(
    core: Core, user_id: int, *, limit: int = DEFAULT_LIMIT, before: int | None = None
) -> list[TimelineEntry]:
    """The newest ``limit`` (1..MAX_LIMIT) shown events of ``user_id``, newest first; with
    ``before``, only events with a smaller id (the next page after the last one seen).

    Ids are never reused (see ``authdb.db.models``), so a new account cannot inherit the
    trail of a deleted one that had its id.
    """
    query = (
        select(AuditEvent)
        .where(AuditEvent.user_id == user_id, AuditEvent.event.in_(SHOWN))
        .order_by(AuditEvent.id.desc())
        .limit(max(1, min(limit, MAX_LIMIT)))
    )
    if before is not None:
        query = query.where(AuditEvent.id < before)
    async with core.sessionmaker() as db:
        rows = (await db.scalars(query)).all()
    return [shape(row) for row in rows]


def shape(row: AuditEvent) -> TimelineEntry:
    """The person-facing form of an audit row (of a shown event)."""
    detail = _safe_detail(row.event, row.detail or {})
    by_someone_else = row.actor_id is not None and row.actor_id != row.user_id
    by_administrator = by_someone_else or _by_operator(row)
    if by_administrator:
        detail["by_administrator"] = True
    return TimelineEntry(
        id=row.id,
        time=row.created_at,
        event=row.event,
        ip_address=None if by_administrator else row.ip_address,
        device=None if by_administrator else device_name(row.user_agent),
        detail=detail,
    )


def _by_operator(row: AuditEvent) -> bool:
    """A change made with the ``authdb`` CLI: no address (every HTTP request has one) and
    the CLI's own client name."""
    return row.ip_address is None and row.user_agent == CLI_CLIENT.user_agent


def _safe_detail(event: str, detail: dict[str, object]) -> dict[str, DetailValue]:
    """The whitelisted fields of ``detail``, and only values of plain types."""
    kept: dict[str, DetailValue] = {}
    for key in SHOWN.get(event, ()):
        if key not in detail:
            continue
        value = detail[key]
        if value is None or isinstance(value, str | int | bool):
            kept[key] = value
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            kept[key] = [str(item) for item in value]
    return kept
