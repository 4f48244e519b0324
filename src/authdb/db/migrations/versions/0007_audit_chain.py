"""A hash chain through the audit trail, so that edited or deleted events can be detected.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Adds ``audit_events.chain_seq`` (the row's place in the chain, unique), ``prev_hash`` and
``row_hash`` (hex SHA-256), and chains the events already there in id order, as
``authdb.services.audit_chain`` chains new ones. Downgrading drops the three columns.
"""

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
_BATCH = 2000
_EVENTS = sa.table(
    "audit_events",
    sa.column("id", sa.BigInteger),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("event", sa.String),
    sa.column("user_id", sa.BigInteger),
    sa.column("actor_id", sa.BigInteger),
    sa.column("ip_address", sa.String),
    sa.column("user_agent", sa.String),
    sa.column("detail", sa.JSON),
    sa.column("chain_seq", sa.BigInteger),
    sa.column("prev_hash", sa.String),
    sa.column("row_hash", sa.String),
)


def upgrade() -> None:
    # Plain ADD COLUMNs, filled in, then NOT NULL: on SQLite that last step copies the table
    # (batch mode), which is safe here: no other table refers to audit_events.
    for name, kind in (
        ("chain_seq", sa.BigInteger()),
        ("prev_hash", sa.String(64)),
        ("row_hash", sa.String(64)),
    ):
        op.add_column("audit_events", sa.Column(name, kind))
    _chain_existing_events()
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("chain_seq", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("row_hash", existing_type=sa.String(64), nullable=False)
    op.create_index("ix_audit_events_chain_seq", "audit_events", ["chain_seq"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_audit_events_chain_seq", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        for name in ("row_hash", "prev_hash", "chain_seq"):
            batch.drop_column(name)


def _chain_existing_events() -> None:
    """Link every existing row in id order, ``_BATCH`` rows at a time."""
    bind = op.get_bind()
    update = (
        _EVENTS.update()
        .where(_EVENTS.c.id == sa.bindparam("row_id"))
        .values(
            chain_seq=sa.bindparam("seq"),
            prev_hash=sa.bindparam("prev"),
            row_hash=sa.bindparam("hash"),
        )
    )
    fields = [c for c in _EVENTS.c if c.name not in ("chain_seq", "prev_hash", "row_hash")]
    seq, prev, after = 0, GENESIS, None
    while True:
        query = sa.select(*fields).order_by(_EVENTS.c.id).limit(_BATCH)
        if after is not None:
            query = query.where(_EVENTS.c.id > after)
        rows = bind.execute(query).all()
        if not rows:
            return
        links = []
        for row in rows:
            seq += 1
            row_hash = _link_hash(prev, seq, row)
            links.append({"row_id": row.id, "seq": seq, "prev": prev, "hash": row_hash})
            prev = row_hash
        bind.execute(update, links)
        after = rows[-1].id


def _link_hash(prev_hash: str, chain_seq: int, row: Any) -> str:
    """A frozen copy of ``authdb.services.audit_chain.link_hash`` (its format 1), so that this
    revision keeps meaning what it meant; tests/test_migration_0007.py checks they agree."""
    created_at: datetime = row.created_at
    # As authdb.db.models.UTCDateTime reads it: SQLite gives back naive UTC times.
    created_at = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at
    moment = created_at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    fields = [
        "authdb-audit-chain-1",
        prev_hash,
        chain_seq,
        moment + "Z",
        row.event,
        row.user_id,
        row.actor_id,
        row.ip_address,
        row.user_agent,
        row.detail,
    ]
    encoded = json.dumps(fields, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()
