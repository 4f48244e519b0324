"""Signing keys: the key pairs that sign access tokens under RS256, ES256 or EdDSA.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Adds ``signing_keys``: one row per key pair: the current one (``activated_at`` set), the next
one (published ahead, not yet signing), and those rotated out or retired. The public key is kept
as a JWK; the private key is sealed (AES-GCM under the deployment secret) and erased once the
key stops signing. Nothing changes for an HS256 deployment, which uses no row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY already is (and must stay INTEGER).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("id", ID, primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False, unique=True),
        sa.Column("kid", sa.String(64), nullable=False, unique=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column("sealed_private_key", sa.LargeBinary),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("activated_at", TS),
        sa.Column("rotated_at", TS),
        sa.Column("retired_at", TS),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
