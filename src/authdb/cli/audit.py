"""``authdb audit``: print the security event log; ``authdb audit verify``: check its chain."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from authdb.auth import Auth
from authdb.cli.common import fail, run
from authdb.db.models import AuditEvent
from authdb.services import audit as audit_service
from authdb.services import audit_chain

_RELATIVE = re.compile(r"^(\d{1,9})\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_COLUMNS = ("time", "event", "user", "actor", "ip", "user_agent", "detail")
_HEX_HASH = re.compile(r"^[0-9a-f]{64}$")


def parse_since(value: str, now: datetime) -> datetime:
    """An ISO 8601 time (naive means UTC) or a span back from ``now`` such as ``30m``, ``7d``."""
    relative = _RELATIVE.match(value.strip().lower())
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"invalid --since {value!r}: use ISO 8601 (2026-01-01T00:00:00Z) "
            "or a span such as 30m, 2h, 7d"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_dict(event: AuditEvent) -> dict[str, Any]:
    """One event as plain JSON-ready values."""
    return {
        "id": event.id,
        "time": _time(event.created_at),
        "event": event.event,
        "user_id": event.user_id,
        "actor_id": event.actor_id,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
        "detail": event.detail,
    }


def _printable(text: str) -> str:
    # User agents come from clients: escape control characters (terminal escape sequences,
    # bidi overrides) instead of handing them to the operator's terminal.
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _cells(event: AuditEvent) -> tuple[str, ...]:
    detail = json.dumps(event.detail, sort_keys=True) if event.detail else "-"
    return (
        _time(event.created_at.replace(microsecond=0)),
        event.event,
        "-" if event.user_id is None else str(event.user_id),
        "-" if event.actor_id is None else str(event.actor_id),
        event.ip_address or "-",
        _printable(event.user_agent) if event.user_agent else "-",
        detail,
    )


def format_table(events: list[AuditEvent]) -> str:
    """Aligned columns with a header; the last column is never padded."""
    rows = [tuple(name.upper().replace("_", " ") for name in _COLUMNS)]
    rows += [_cells(event) for event in events]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


app = typer.Typer(help="The security event log.")


@app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option(help="Only this user's events: a username, an email or an id.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only events at or after this time: ISO 8601 (naive means UTC), "
            "or a span back from now such as 30m, 2h, 7d."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Print at most this many, the newest.")
    ] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Print security events (logins, lockouts, logouts, token reuse ...), oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        start = parse_since(since, datetime.now(UTC)) if since else None
    except ValueError as exc:
        fail(str(exc))

    async def _events(auth: Auth) -> list[AuditEvent]:
        user_id = await audit_service.subject_id(auth.core, user) if user else None
        return await audit_service.list_events(
            auth.core, user_id=user_id, since=start, limit=limit, latest=True
        )

    events = run(_events)
    if as_json:
        typer.echo(json.dumps([as_dict(event) for event in events], indent=2))
    elif events:
        typer.echo(format_table(events))
    else:
        typer.echo("no events", err=True)


@app.command("verify")
def verify(
    head: Annotated[
        str | None,
        typer.Option(
            help="A head hash printed by an earlier verify: also fail unless the chain still "
            "passes through it (catches deleted newest events and a rewritten trail).",
        ),
    ] = None,
) -> None:
    """Check the audit trail's hash chain: "ok", or the first event where it breaks (exit 1)."""
    expected = head.strip().lower() if head is not None else None
    if expected is not None and not _HEX_HASH.match(expected):
        fail(f"invalid --head {head!r}: expected 64 hexadecimal digits")

    async def _verify(auth: Auth) -> audit_chain.ChainReport:
        return await audit_chain.verify(auth.core, passes_through=expected)

    report = run(_verify)
    if report.broken_at is not None:
        fail(f"audit chain broken at event {report.broken_at} ({report.reason})")
    if expected is not None and not report.passed_through:
        fail(
            f"audit chain does not pass through head {expected}: events were deleted, "
            "or the trail was rewritten"
        )
    typer.echo(f"ok: {report.count} events, head {report.head}")
