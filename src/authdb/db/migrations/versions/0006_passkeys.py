"""Passkeys: WebAuthn credentials, spent challenges, and the first factor of an MFA challenge.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

Adds ``passkeys`` (one row per registered credential, removed with its user) and
``passkey_challenges`` (the SHA-256 of each challenge once used, until it expires), and
``mfa_challenges.first_factor`` ("password" for every existing challenge).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY already is (and must stay INTEGER).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "passkeys",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "user_id",
            ID,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("credential_id", sa.LargeBinary(1023), nullable=False, unique=True),
        sa.Column("user_handle", sa.LargeBinary(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("sign_count", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("aaguid", sa.String(36)),
        sa.Column("backup_eligible", sa.Boolean, nullable=False),
        sa.Column("backed_up", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_used_at", TS),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "passkey_challenges",
        sa.Column("challenge_hash", sa.String(64), primary_key=True),
        sa.Column("expires_at", TS, nullable=False, index=True),
    )
    # A plain ADD COLUMN, no batch mode (see 0004): existing challenges were all passwords.
    op.add_column(
        "mfa_challenges",
        sa.Column("first_factor", sa.String(16), nullable=False, server_default="password"),
    )


def downgrade() -> None:
    op.drop_column("mfa_challenges", "first_factor")
    op.drop_table("passkey_challenges")
    op.drop_table("passkeys")
