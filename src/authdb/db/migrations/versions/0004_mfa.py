"""Multi-factor authentication: TOTP authenticators, recovery codes and MFA challenges.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Adds ``users.mfa_enabled`` (false for every existing account) and three tables, each removed
with its user (ON DELETE CASCADE): ``mfa_totp`` (one sealed RFC 6238 secret per user, pending
until confirmed), ``mfa_recovery_codes`` (SHA-256 of single-use codes) and ``mfa_challenges``
(the ``mfa_token`` between a right password and the second factor, stored as a hash).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY already is (and must stay INTEGER).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _user_id(*, primary_key: bool = False) -> sa.Column[int]:
    return sa.Column(
        "user_id",
        ID,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        primary_key=primary_key,
        index=not primary_key,
    )


def upgrade() -> None:
    # A plain ADD COLUMN, no batch mode: on SQLite a batch would copy and drop ``users``, and
    # the drop would cascade to every session.
    op.add_column(
        "users",
        sa.Column("mfa_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "mfa_totp",
        _user_id(primary_key=True),
        sa.Column("sealed_secret", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("confirmed_at", TS),
        sa.Column("last_used_step", sa.BigInteger),
    )
    op.create_table(
        "mfa_recovery_codes",
        sa.Column("id", ID, primary_key=True),
        _user_id(),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("used_at", TS),
    )
    op.create_table(
        "mfa_challenges",
        sa.Column("id", ID, primary_key=True),
        _user_id(),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False, index=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("used_at", TS),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    for table in ("mfa_challenges", "mfa_recovery_codes", "mfa_totp"):
        op.drop_table(table)
    op.drop_column("users", "mfa_enabled")
