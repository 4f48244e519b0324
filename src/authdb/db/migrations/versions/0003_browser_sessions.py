"""Browser sessions: a session may be carried by a cookie instead of a refresh token.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Adds ``auth_sessions.cookie_hash`` (the SHA-256 of a page sign-in's cookie secret), unique, so
the cookie finds its session by one indexed lookup. Existing sessions are API sessions (NULL).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN and a unique index, no batch mode: on SQLite a batch would copy and
    # drop auth_sessions, and the drop would cascade to every refresh token.
    op.add_column("auth_sessions", sa.Column("cookie_hash", sa.String(64), nullable=True))
    op.create_index("ix_auth_sessions_cookie_hash", "auth_sessions", ["cookie_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_auth_sessions_cookie_hash", table_name="auth_sessions")
    op.drop_column("auth_sessions", "cookie_hash")
