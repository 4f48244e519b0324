"""Initial schema, adopting a FastAPI-tutorial ``users`` table when one exists.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from authdb.names import email_key, username_key

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# SQLite must never hand out a deleted user's or session's id again (tokens name them).
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("users"):
        _adopt_tutorial_users()
    else:
        _create_users()
    _create_other_tables()


def downgrade() -> None:
    for table in (
        "authdb_meta",
        "audit_events",
        "login_failures",
        "email_tokens",
        "refresh_tokens",
        "auth_sessions",
        "users",
    ):
        op.drop_table(table)


def _create_users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("username_key", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("email_key", sa.String(320)),
        sa.Column("full_name", sa.String(256)),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("hashed_password", sa.String(255), nullable=False),
        sa.Column("is_verified", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("is_superuser", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("last_login_at", TS),
        sa.Column("password_changed_at", TS),
        **NEVER_REUSE_IDS,
    )
    _create_user_key_indexes()


def _create_user_key_indexes() -> None:
    op.create_index("uq_users_username_key", "users", ["username_key"], unique=True)
    op.create_index("uq_users_email_key", "users", ["email_key"], unique=True)


def _adopt_tutorial_users() -> None:
    """Add authdb's columns to the tutorial's table, keeping every row and id."""
    # On SQLite the table is rebuilt, which is also how it gains AUTOINCREMENT.
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(
        "users", recreate="always" if sqlite else "auto", table_kwargs=NEVER_REUSE_IDS
    ) as batch:
        batch.add_column(sa.Column("username_key", sa.String(64)))
        batch.add_column(sa.Column("email_key", sa.String(320)))
        batch.add_column(
            sa.Column("is_verified", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("is_superuser", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("created_at", TS))
        batch.add_column(sa.Column("updated_at", TS))
        batch.add_column(sa.Column("last_login_at", TS))
        batch.add_column(sa.Column("password_changed_at", TS))
    _fill_adopted_rows()
    with op.batch_alter_table("users", table_kwargs=NEVER_REUSE_IDS) as batch:
        batch.alter_column("username_key", existing_type=sa.String(64), nullable=False)
        batch.alter_column("created_at", existing_type=TS, nullable=False)
        batch.alter_column("updated_at", existing_type=TS, nullable=False)
    _create_user_key_indexes()


def _fill_adopted_rows() -> None:
    bind = op.get_bind()
    users = sa.table(
        "users",
        sa.column("id", sa.Integer),
        sa.column("username", sa.String),
        sa.column("email", sa.String),
        sa.column("disabled", sa.Boolean),
        sa.column("username_key", sa.String),
        sa.column("email_key", sa.String),
        sa.column("created_at", TS),
        sa.column("updated_at", TS),
    )
    now = datetime.now(UTC)
    rows = bind.execute(sa.select(users.c.id, users.c.username, users.c.email)).all()
    for row in rows:
        bind.execute(
            users.update()
            .where(users.c.id == row.id)
            .values(
                username_key=username_key(row.username or f"user{row.id}"),
                email_key=email_key(row.email) if row.email else None,
                created_at=now,
                updated_at=now,
            )
        )
    bind.execute(users.update().where(users.c.disabled.is_(None)).values(disabled=False))


def _create_other_tables() -> None:
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_used_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False, index=True),
        sa.Column("revoked_at", TS),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("ip_address", sa.String(64)),
        **NEVER_REUSE_IDS,
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "session_id",
            sa.Integer,
            sa.ForeignKey("auth_sessions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("spent_at", TS),
    )
    op.create_table(
        "email_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("email", sa.String(320)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
    )
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("failure_count", sa.Integer, nullable=False),
        sa.Column("locked_until", TS),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", TS, nullable=False, index=True),
        sa.Column("event", sa.String(64), nullable=False, index=True),
        sa.Column("user_id", sa.Integer, index=True),
        sa.Column("actor_id", sa.Integer),
        sa.Column("ip_address", sa.String(64)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("detail", sa.JSON),
    )
    op.create_table(
        "authdb_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
