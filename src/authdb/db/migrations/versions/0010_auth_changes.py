"""Changes to users and sessions, announced to every process's session cache.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

Triggers announce every change that can alter the answer to "is this session live, and
whose is it?" (see authdb.db.session_cache), whoever makes it: a user updated or deleted; a
session revoked, re-dated, moved or deleted while live.

* PostgreSQL: ``NOTIFY authdb_auth_changes`` with the user's id (delivered at commit); a
  TRUNCATE of either table sends ``*``: every user.
* SQLite: a row in the new ``auth_changes`` table (the user's id), which each process reads
  when ``PRAGMA data_version`` says something was committed. The table exists on PostgreSQL
  too, empty, so that both databases match the models.

A later migration that rebuilds ``users`` or ``auth_sessions`` on SQLite (batch mode copies and
drops the table) drops these triggers with it and must create them again.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The columns of auth_sessions whose change can end or move a live session.
_SESSION_COLUMNS = "revoked_at, expires_at, user_id, cookie_hash"

_SQLITE = [
    "CREATE TRIGGER auth_changes_users_update AFTER UPDATE ON users"
    " BEGIN INSERT INTO auth_changes (user_id) VALUES (OLD.id); END",
    "CREATE TRIGGER auth_changes_users_delete AFTER DELETE ON users"
    " BEGIN INSERT INTO auth_changes (user_id) VALUES (OLD.id); END",
    f"CREATE TRIGGER auth_changes_sessions_update AFTER UPDATE OF {_SESSION_COLUMNS}"  # noqa: S608
    " ON auth_sessions BEGIN INSERT INTO auth_changes (user_id) VALUES (OLD.user_id); END",
    "CREATE TRIGGER auth_changes_sessions_delete AFTER DELETE ON auth_sessions"
    " WHEN OLD.revoked_at IS NULL"
    " BEGIN INSERT INTO auth_changes (user_id) VALUES (OLD.user_id); END",
]
_SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS auth_changes_users_update",
    "DROP TRIGGER IF EXISTS auth_changes_users_delete",
    "DROP TRIGGER IF EXISTS auth_changes_sessions_update",
    "DROP TRIGGER IF EXISTS auth_changes_sessions_delete",
]

_POSTGRES = [
    "CREATE FUNCTION authdb_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN PERFORM pg_notify('authdb_auth_changes', OLD.id::text); RETURN NULL; END $$",
    "CREATE FUNCTION authdb_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN PERFORM pg_notify('authdb_auth_changes', OLD.user_id::text); RETURN NULL; END $$",
    "CREATE TRIGGER authdb_users_changed AFTER UPDATE OR DELETE ON users"
    " FOR EACH ROW EXECUTE FUNCTION authdb_user_changed()",
    f"CREATE TRIGGER authdb_sessions_changed AFTER UPDATE OF {_SESSION_COLUMNS}"
    " ON auth_sessions FOR EACH ROW EXECUTE FUNCTION authdb_session_changed()",
    "CREATE TRIGGER authdb_sessions_deleted AFTER DELETE ON auth_sessions"
    " FOR EACH ROW WHEN (OLD.revoked_at IS NULL) EXECUTE FUNCTION authdb_session_changed()",
    # TRUNCATE fires no row trigger: '*' (no user id) empties every process's whole cache.
    "CREATE FUNCTION authdb_all_changed() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN PERFORM pg_notify('authdb_auth_changes', '*'); RETURN NULL; END $$",
    "CREATE TRIGGER authdb_users_truncated AFTER TRUNCATE ON users"
    " FOR EACH STATEMENT EXECUTE FUNCTION authdb_all_changed()",
    "CREATE TRIGGER authdb_sessions_truncated AFTER TRUNCATE ON auth_sessions"
    " FOR EACH STATEMENT EXECUTE FUNCTION authdb_all_changed()",
]
_POSTGRES_DROP = [
    "DROP TRIGGER IF EXISTS authdb_sessions_truncated ON auth_sessions",
    "DROP TRIGGER IF EXISTS authdb_users_truncated ON users",
    "DROP FUNCTION IF EXISTS authdb_all_changed()",
    "DROP TRIGGER IF EXISTS authdb_sessions_deleted ON auth_sessions",
    "DROP TRIGGER IF EXISTS authdb_sessions_changed ON auth_sessions",
    "DROP TRIGGER IF EXISTS authdb_users_changed ON users",
    "DROP FUNCTION IF EXISTS authdb_session_changed()",
    "DROP FUNCTION IF EXISTS authdb_user_changed()",
]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    op.create_table(
        "auth_changes",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", ID, nullable=False),
        sqlite_autoincrement=True,
    )
    for statement in _SQLITE if _sqlite() else _POSTGRES:
        op.execute(statement)


def downgrade() -> None:
    for statement in _SQLITE_DROP if _sqlite() else _POSTGRES_DROP:
        op.execute(statement)
    op.drop_table("auth_changes")
