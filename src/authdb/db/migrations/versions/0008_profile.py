"""Profile fields: the application's own fields on each user, as one JSON value.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-13

Adds ``users.profile``, nullable (NULL for every existing account): JSONB on PostgreSQL, JSON
(text) on SQLite. What goes in it is the application's business (``Auth(profile=Model)``), so
a new or changed profile model needs no migration of its own.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# As authdb.db.models.PROFILE_JSON, frozen here so that this revision keeps meaning what it meant.
PROFILE_JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    # A plain ADD COLUMN, no batch mode: on SQLite a batch would copy and drop ``users``, and
    # the drop would cascade to every session (see 0004).
    op.add_column("users", sa.Column("profile", PROFILE_JSON, nullable=True))


def downgrade() -> None:
    # SQLite (3.35 and later) drops a column in place, so no batch copy here either.
    op.drop_column("users", "profile")
