"""Sign-in with other providers: the identities linked to each user.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

Adds ``oauth_identities`` (one row per account at another provider linked to a user, removed
with its user): unique per provider and subject, and per user and provider; ``confirmed`` is
false for the link of an account made from an address the provider did not verify.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY already is (and must stay INTEGER).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "oauth_identities",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("confirmed", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_used_at", TS),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_oauth_identities_subject", "oauth_identities", ["provider", "subject"], unique=True
    )
    op.create_index(
        "uq_oauth_identities_user", "oauth_identities", ["user_id", "provider"], unique=True
    )


def downgrade() -> None:
    op.drop_table("oauth_identities")
