"""Round-2 hardening: 64-bit ids, pending email changes, refresh-token successors, stable keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Upgrades a round-1 database in place on both backends:

- PostgreSQL ids and the columns that refer to them become BIGINT (with their sequences);
  SQLite's INTEGER primary keys already are 64-bit and must stay INTEGER to remain rowids.
- ``users.pending_email`` holds an address change until its link is followed.
- ``refresh_tokens.successor`` keeps the encrypted successor for the reuse interval.
- ``username_key`` / ``email_key`` are recomputed with the stable folding of
  ``authdb.names.fold``; two accounts whose keys now collide stop the upgrade with their ids.
"""

import sqlalchemy as sa
from alembic import op

from authdb.names import email_key, username_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (table, column, sequence of the column if it is a primary key)
_ID_COLUMNS = (
    ("users", "id", True),
    ("auth_sessions", "id", True),
    ("auth_sessions", "user_id", False),
    ("refresh_tokens", "id", True),
    ("refresh_tokens", "session_id", False),
    ("email_tokens", "id", True),
    ("email_tokens", "user_id", False),
    ("audit_events", "id", True),
    ("audit_events", "user_id", False),
    ("audit_events", "actor_id", False),
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _widen_ids()
    op.add_column("users", sa.Column("pending_email", sa.String(320)))
    op.add_column("refresh_tokens", sa.Column("successor", sa.LargeBinary))
    _refold_keys()


def downgrade() -> None:
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_column("successor")
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("pending_email")
    # Ids stay 64-bit: narrowing could fail on rows past 2**31, and nothing needs it.


def _widen_ids() -> None:
    for table, column, has_sequence in _ID_COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger, existing_type=sa.Integer)
        if has_sequence:
            # A SERIAL's sequence is typed INTEGER too and would stop at 2**31-1.
            sequence = op.get_bind().scalar(
                sa.text("SELECT pg_get_serial_sequence(:table, :column)"),
                {"table": table, "column": column},
            )
            if sequence is not None:
                op.execute(sa.text(f"ALTER SEQUENCE {sequence} AS BIGINT"))


def _refold_keys() -> None:
    bind = op.get_bind()
    users = sa.table(
        "users",
        sa.column("id", sa.BigInteger),
        sa.column("username", sa.String),
        sa.column("email", sa.String),
        sa.column("username_key", sa.String),
        sa.column("email_key", sa.String),
    )
    rows = bind.execute(
        sa.select(
            users.c.id, users.c.username, users.c.email, users.c.username_key, users.c.email_key
        )
    ).all()
    seen: dict[tuple[str, str], int] = {}
    changes = []
    for row in rows:
        new_username = username_key(row.username)
        new_email = email_key(row.email) if row.email else None
        for kind, key in (("username", new_username), ("email", new_email)):
            if key is None:
                continue
            other = seen.setdefault((kind, key), row.id)
            if other != row.id:
                raise RuntimeError(
                    f"users {other} and {row.id} have the same {kind} once case-folded "
                    f"({key!r}): rename one of them, then run the migration again"
                )
        if (new_username, new_email) != (row.username_key, row.email_key):
            changes.append((row.id, new_username, new_email))
    # Clear first, so that swapping keys between two rows never meets the unique index.
    for user_id, _, _ in changes:
        bind.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(username_key=f" migrating {user_id}", email_key=None)
        )
    for user_id, new_username, new_email in changes:
        bind.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(username_key=new_username, email_key=new_email)
        )
