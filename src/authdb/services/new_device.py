"""New-device sign-in alerts (``AUTHDB_NEW_DEVICE_ALERTS``): is this sign-in from a device and
network the account has not signed in from lately?

A sign-in is known when an earlier ``login_ok`` of the last 90 days came from the same device
(the readable name of the User-Agent, so browser updates do not count as new) AND the same
network (IPv4 /24, IPv6 /64, so a changing address at home does not either). The first
sign-in of an account alerts nobody: there is nothing to compare it with.

The check runs after the sign-in has committed and been answered; it reads at most
``SCAN_LIMIT`` of the account's newest sign-ins through the ``user_id`` index.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from sqlalchemy import select

from authdb import links
from authdb.db.models import AuditEvent, AuthSession, User
from authdb.devices import device_name
from authdb.services.core import Core
from authdb.services.email_tokens import Mail

WINDOW = timedelta(days=90)
# A bound on the rows read per sign-in. An account with more sign-ins than this within the
# window may get an alert for a device it used long ago: the safe direction.
SCAN_LIMIT = 200
TEMPLATE = "new_device"

Place = tuple[str, str | None]  # (device name, network)


def network_of(ip_address: str | None) -> str | None:
    """The network a client address belongs to: ``192.0.2.0/24``, ``2001:db8:1:2::/64``.

    An IPv4-mapped IPv6 address counts as its IPv4 address; a value that is not an IP address
    (a test client, a Unix socket) is its own network.
    """
    if not ip_address:
        return None
    try:
        address = ipaddress.ip_address(ip_address)
    except ValueError:
        return ip_address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def place_of(ip_address: str | None, user_agent: str | None) -> Place:
    """Where a sign-in came from, as compared: (device name, network)."""
    return device_name(user_agent), network_of(ip_address)


def is_new(current: AuditEvent, earlier: list[AuditEvent]) -> bool:
    """Whether ``current`` (a ``login_ok``) deserves an alert given the account's ``earlier``
    sign-ins (any age, newest first): none of the last ``WINDOW`` shares its device and
    network. False when there is no earlier sign-in at all."""
    if not earlier:
        return False
    since = current.created_at - WINDOW
    here = place_of(current.ip_address, current.user_agent)
    return not any(
        row.created_at >= since and place_of(row.ip_address, row.user_agent) == here
        for row in earlier
    )


async def alert_for(core: Core, session_id: int) -> Mail | None:
    """The alert email for the sign-in that opened ``session_id``, or None when it is from a
    known device and network, is the account's first, or the account has no verified email
    address.

    Call it after the sign-in has committed (its ``login_ok`` row is what it compares).
    """
    async with core.sessionmaker() as db:
        user_id = await db.scalar(select(AuthSession.user_id).where(AuthSession.id == session_id))
        user = await db.get(User, user_id) if user_id is not None else None
        # Only a verified address: else anyone could register a stranger's address and mail
        # it alerts (with a User-Agent of their choosing) at will.
        if user is None or not user.email or not user.is_verified:
            return None
        rows = (
            await db.scalars(
                select(AuditEvent)
                .where(AuditEvent.user_id == user.id, AuditEvent.event == "login_ok")
                .order_by(AuditEvent.id.desc())
                .limit(SCAN_LIMIT)
            )
        ).all()
    for index, row in enumerate(rows):
        if (row.detail or {}).get("session_id") == session_id:
            # Only sign-ins before this one count: two new-device sign-ins at once both alert.
            if is_new(row, list(rows[index + 1 :])):
                return _mail(core, user, row)
            return None
    return None  # its row is not among the newest (or not committed): nothing to compare


def _mail(core: Core, user: User, row: AuditEvent) -> Mail:
    assert user.email is not None
    settings = core.settings
    page = core.links.account if settings.pages_enabled else None
    account = links.url(settings.public_url, page) if page else settings.public_url
    return Mail(
        to=user.email,
        template=TEMPLATE,
        context={
            "username": user.username,
            "site_name": settings.site_name,
            "time": _when(row.created_at),
            "device": device_name(row.user_agent),
            "ip_address": row.ip_address or "an unknown address",
            "account_url": account,
        },
    )


def _when(moment: datetime) -> str:
    """``2025-03-01 14:05 UTC``: a time in mail, unambiguous for any reader."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")
