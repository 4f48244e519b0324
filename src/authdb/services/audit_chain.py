"""The audit trail's hash chain: linking each new event to the one before, and checking it.

Every ``audit_events`` row carries its place in the chain (``chain_seq`` 1, 2, ...), the hash
of the row before it (``prev_hash``; :data:`GENESIS` for the first) and its own ``row_hash``:
SHA-256 over :func:`link_hash`'s canonical encoding of ``prev_hash``, ``chain_seq`` and every
field. Editing, deleting, reordering or inserting rows without recomputing every later hash
breaks the chain at the first row touched, which :func:`verify` names.

Positions and hashes are given out when the transaction commits, not when ``record`` adds the
event: unchained events are held back from earlier flushes (``_hold_back``), and at commit
(``_chain_at_commit``) the transaction takes the chain lock, reads the head and adds them. So
the lock is held only for inserting those rows and committing: never across a password hash,
a network call or a row lock taken later in the transaction (no deadlocks), and a
transaction that rolls back leaves no gap. The lock is ``pg_advisory_xact_lock`` on
PostgreSQL; on SQLite every transaction already starts with ``BEGIN IMMEDIATE`` (see
authdb.db.engine), so the head read is in the one write transaction there may be. The unique
index on ``chain_seq`` backs either: two writers that read the same head cannot both commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.orm import Session, SessionTransaction

from authdb.db.models import AuditEvent, utcnow
from authdb.db.sign_in_store import AUDIT_CHAIN_LOCK
from authdb.services.core import Core

# The first row's ``prev_hash``: 32 zero bytes, in hex.
GENESIS = "0" * 64
# Names the encoding inside every hash, so that a future format cannot be mistaken for this one.
_FORMAT = "authdb-audit-chain-1"
# Audited transactions on PostgreSQL serialize on this advisory lock (the native sign-in path,
# authdb.db.sign_in_store, takes it too).
_CHAIN_LOCK = AUDIT_CHAIN_LOCK
# Session.info key of the events held back from flushes until the transaction commits.
_HELD = "authdb_unchained_events"
# The columns written for a new event (``id`` is the database's).
_INSERTED = (
    "created_at", "event", "user_id", "actor_id", "ip_address", "user_agent", "detail",
    "chain_seq", "prev_hash", "row_hash",
)  # fmt: skip
# Rows read per query by verify: memory stays flat however long the trail.
BATCH = 2000


def link_hash(
    prev_hash: str,
    chain_seq: int,
    created_at: datetime,
    event: str,
    user_id: int | None,
    actor_id: int | None,
    ip_address: str | None,
    user_agent: str | None,
    detail: Any,
) -> str:
    """The hex SHA-256 of one row, linked to ``prev_hash``.

    The input is a JSON array (fixed positions, so no field can bleed into the next; ASCII
    only; object keys sorted; no spaces) of a format tag and the fields, the time in UTC as
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ``. ``detail`` must be as read back from the database
    (:func:`stored_detail`). This encoding is frozen: stored chains depend on it.
    """
    moment = created_at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    fields = [
        _FORMAT,
        prev_hash,
        chain_seq,
        moment + "Z",
        event,
        user_id,
        actor_id,
        ip_address,
        user_agent,
        detail,
    ]
    encoded = json.dumps(fields, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def stored_detail(detail: Any) -> Any:
    """``detail`` as the JSON column gives it back (tuples become lists, keys strings ...)."""
    return None if detail is None else json.loads(json.dumps(detail))


def _row_hash(row: Any, prev_hash: str, chain_seq: int, detail: Any) -> str:
    return link_hash(
        prev_hash,
        chain_seq,
        row.created_at,
        row.event,
        row.user_id,
        row.actor_id,
        row.ip_address,
        row.user_agent,
        detail,
    )


# --- chaining new events --------------------------------------------------------------------------


def _unchained(session: Session) -> list[AuditEvent]:
    """New, not yet chained events in the session, in the order they were added."""
    found = [o for o in session.new if isinstance(o, AuditEvent) and not o.row_hash]
    return sorted(found, key=lambda o: inspect(o).insert_order or 0)


@orm_event.listens_for(Session, "before_flush")
def _hold_back(session: Session, _context: Any, _instances: Any) -> None:
    # An autoflush before the commit must not insert an unchained row: keep it until then.
    held = _unchained(session)
    for item in held:
        session.expunge(item)
    if held:
        session.info.setdefault(_HELD, []).extend(held)


@orm_event.listens_for(Session, "before_commit")
def _chain_at_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint: its events wait for the real commit
    if not session.info.get(_HELD) and not _unchained(session):
        return  # no round trip for a transaction without events
    session.flush()  # everything else first, so the lock is held for the audit rows alone
    held: list[AuditEvent] = session.info.pop(_HELD, [])
    if not held:
        return
    seq, prev = _lock_head(session)
    for item in held:
        item.created_at = item.created_at or utcnow()
    rows = chained([{c: getattr(item, c) for c in _INSERTED} for item in held], seq, prev)
    for item, row in zip(held, rows, strict=True):
        item.chain_seq, item.prev_hash, item.row_hash = (
            row["chain_seq"], row["prev_hash"], row["row_hash"]
        )  # fmt: skip
    # One executemany, not the unit of work: nothing reads the events' ids back, and the ORM
    # would insert them a row per statement on SQLite (a bulk import records 100,000).
    session.connection().execute(insert(AuditEvent), rows)


def chained(rows: list[dict[str, Any]], seq: int, prev: str | None) -> list[dict[str, Any]]:
    """``rows`` (``audit_events`` columns) placed after the head at ``seq`` whose hash is
    ``prev`` (None: the trail is empty): with ``chain_seq``, ``prev_hash`` and ``row_hash``."""
    prev = prev or GENESIS
    linked = []
    for row in rows:
        seq += 1
        row_hash = link_hash(
            prev,
            seq,
            row["created_at"],
            row["event"],
            row["user_id"],
            row["actor_id"],
            row["ip_address"],
            row["user_agent"],
            stored_detail(row["detail"]),
        )
        linked.append({**row, "chain_seq": seq, "prev_hash": prev, "row_hash": row_hash})
        prev = row_hash
    return linked


def _lock_head(session: Session) -> tuple[int, str]:
    """Take the chain lock (PostgreSQL) and read the head: (position, hash), (0, GENESIS) if
    the trail is empty. The read is its own statement, so it sees what the previous holder of
    the lock committed (READ COMMITTED takes a snapshot per statement)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    head = connection.execute(
        select(AuditEvent.chain_seq, AuditEvent.row_hash)
        .order_by(AuditEvent.chain_seq.desc())
        .limit(1)
    ).first()
    return (0, GENESIS) if head is None else (head[0], head[1])


@orm_event.listens_for(Session, "after_transaction_end")
def _end(session: Session, transaction: SessionTransaction) -> None:
    # Rolled back, or closed without a commit: its events were never stored. (authdb uses no
    # savepoints; events recorded inside one wait for the outermost commit whatever its fate.)
    if transaction.parent is None:
        session.info.pop(_HELD, None)


# --- verifying --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What verify found: ``count`` events checked and the last one's hash (``head``); or the
    id of the first event where the chain breaks and why (``broken_at``, ``reason``)."""

    count: int
    head: str
    broken_at: int | None = None
    reason: str | None = None
    # Whether a row hashed to verify's ``passes_through`` (always True without one).
    passed_through: bool = True

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify(
    core: Core, *, passes_through: str | None = None, batch: int = BATCH
) -> ChainReport:
    """Walk the whole chain in ``chain_seq`` order, ``batch`` rows per short transaction.

    Stops at the first row that is not where the chain expects it (``missing event before
    it``: a gap; ``position out of range``), that does not name the previous row's hash
    (``does not follow the event before it``), or whose fields no longer give its hash
    (``hash mismatch``). ``passes_through``, a head hash (hex) recorded earlier, must be some
    row's hash: else newest events were deleted or the whole trail recomputed.
    """
    table = AuditEvent.__table__
    count, prev, after = 0, GENESIS, None
    seen = passes_through is None
    while True:
        query = select(table).order_by(table.c.chain_seq).limit(batch)
        if after is not None:
            query = query.where(table.c.chain_seq > after)
        rows = await _read_batch(core, query, after, batch)
        for row in rows:
            reason = _fault(row, count + 1, prev) if not isinstance(row, _Unreadable) else None
            if isinstance(row, _Unreadable) or reason is not None:
                why = reason or "unreadable: a field no longer holds a valid value"
                return ChainReport(count, prev, broken_at=row.id, reason=why)
            count, prev = count + 1, row.row_hash
            seen = seen or row.row_hash == passes_through
        if len(rows) < batch:
            return ChainReport(count, prev, passed_through=seen)
        after = rows[-1].chain_seq


@dataclass(frozen=True)
class _Unreadable:
    """A row whose stored values no longer convert (a time or JSON edited into garbage)."""

    id: int
    chain_seq: int


async def _read_batch(core: Core, query: Any, after: int | None, batch: int) -> list[Any]:
    """The batch's rows; when one of them cannot even be converted, each row alone, the
    first that fails as :class:`_Unreadable` (the walk stops there)."""
    try:
        async with core.sessionmaker() as db:
            return list((await db.execute(query)).all())
    except (ValueError, TypeError):  # json.JSONDecodeError is a ValueError
        pass
    table = AuditEvent.__table__
    positions = select(table.c.id, table.c.chain_seq).order_by(table.c.chain_seq).limit(batch)
    if after is not None:
        positions = positions.where(table.c.chain_seq > after)
    rows: list[Any] = []
    async with core.sessionmaker() as db:
        for row_id, chain_seq in (await db.execute(positions)).all():
            try:
                one = select(table).where(table.c.id == row_id)
                rows.append((await db.execute(one)).one())
            except (ValueError, TypeError):
                rows.append(_Unreadable(row_id, chain_seq))
                break
    return rows


def _fault(row: Any, expected_seq: int, prev: str) -> str | None:
    if row.chain_seq != expected_seq:
        return (
            "missing event before it" if row.chain_seq > expected_seq else "position out of range"
        )
    if row.prev_hash != prev:
        return "does not follow the event before it"
    if row.row_hash != _row_hash(row, prev, row.chain_seq, row.detail):
        return "hash mismatch"
    return None
