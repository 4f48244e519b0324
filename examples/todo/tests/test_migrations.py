"""The app's own Alembic migrations beside authdb's, with the real commands, in every order:
``authdb migrate`` first (the README's order), the app's migrations first on a new database,
and under an authdb that is one revision behind."""

from __future__ import annotations

from authdb.db import migrate as authdb_migrations
from authdb.db.engine import create_engine

from .conftest import PASSWORD, Database, Shell, free_port, query, start_server, table_names

# A few of authdb's tables; the app's migrations never create, change or drop them.
AUTHDB_TABLES = {"users", "auth_sessions", "refresh_tokens", "email_tokens", "audit_events"}


async def _value(url: str, sql: str) -> object:
    rows = await query(url, sql)
    assert len(rows) == 1, rows
    return rows[0][0]


async def _revisions(url: str) -> tuple[object, object]:
    """(authdb's revision, the app's revision), each from its own version table."""
    authdb_revision = await _value(url, "SELECT version_num FROM authdb_alembic_version")
    app_revision = await _value(url, "SELECT version_num FROM alembic_version")
    return authdb_revision, app_revision


def _no_changes(shell: Shell) -> None:
    """``alembic check``: the app's models and its migrated tables agree, and autogenerate
    proposes nothing about authdb's tables (authdb's filter leaves them out)."""
    check = shell.alembic("check")
    assert "No new upgrade operations detected" in check.stdout + check.stderr


async def test_authdb_migrate_then_the_apps_migrations(shell: Shell, database: Database) -> None:
    url = database.url
    head = authdb_migrations.head_revision()
    shell.authdb("migrate")
    assert "todos" not in await table_names(url)

    shell.alembic("upgrade", "head")
    assert AUTHDB_TABLES | {"todos"} <= await table_names(url)
    assert await _revisions(url) == (head, "todo_0001")
    _no_changes(shell)

    # A user (made by the CLI) and a todo survive authdb migrating again, as after an
    # upgrade of authdb, and the app's migrations running again.
    shell.authdb(
        "createuser", "--username", "kept", "--email", "kept@example.com", "--password-stdin",
        stdin=f"{PASSWORD}\n",
    )  # fmt: skip
    user_id = await _value(url, "SELECT id FROM users WHERE username = 'kept'")
    await query(
        url,
        "INSERT INTO todos (owner_id, title, done, created_at)"
        " VALUES (:owner, 'survive', false, CURRENT_TIMESTAMP)",
        owner=user_id,
    )
    assert "database is at revision" in shell.authdb("migrate").stdout
    shell.alembic("upgrade", "head")
    assert await _value(url, "SELECT title FROM todos") == "survive"
    assert await _revisions(url) == (head, "todo_0001")

    # Downgrading the app takes away its own tables only.
    shell.alembic("downgrade", "base")
    tables = await table_names(url)
    assert "todos" not in tables
    assert tables >= AUTHDB_TABLES
    assert await _value(url, "SELECT username FROM users") == "kept"
    assert await query(url, "SELECT version_num FROM alembic_version") == []


async def test_the_apps_migrations_first_then_authdb_migrate(
    shell: Shell, database: Database
) -> None:
    """On a new database, ``alembic upgrade head`` alone is enough: the app's env.py brings
    authdb's tables up first. ``authdb migrate`` afterwards finds nothing to do."""
    url = database.url
    head = authdb_migrations.head_revision()
    shell.alembic("upgrade", "head")
    assert AUTHDB_TABLES | {"todos"} <= await table_names(url)
    assert await _revisions(url) == (head, "todo_0001")
    assert f"database is at revision {head}" in shell.authdb("migrate").stdout
    assert await _revisions(url) == (head, "todo_0001")
    _no_changes(shell)


async def test_authdb_one_revision_behind(shell: Shell, database: Database) -> None:
    """The database of an app that upgraded authdb (say 0.2 → 0.3) but has not migrated yet:
    the app's own ``alembic upgrade head`` brings authdb's schema up too, and the other way
    round ``authdb migrate`` leaves the app's revision alone."""
    url = database.url
    head = authdb_migrations.head_revision()
    behind = create_engine(url)
    try:
        await authdb_migrations.upgrade(behind, "head-1")
    finally:
        await behind.dispose()
    previous = await _value(url, "SELECT version_num FROM authdb_alembic_version")
    assert previous != head

    # Only `upgrade` brings authdb's tables up: not `current`, nor `upgrade --sql` (which
    # prints the app's SQL, and Alembic's log lines go to stderr as alembic.ini says).
    current = shell.alembic("current")
    assert "INFO  [alembic.runtime.migration] Context impl" in current.stderr
    offline = shell.alembic("upgrade", "head", "--sql")
    assert "CREATE TABLE todos" in offline.stdout
    assert await _value(url, "SELECT version_num FROM authdb_alembic_version") == previous

    shell.alembic("upgrade", "head")
    assert await _revisions(url) == (head, "todo_0001")
    _no_changes(shell)


async def test_the_app_refuses_to_start_before_its_migrations(shell: Shell) -> None:
    """Only ``authdb migrate`` ran: the app's lifespan stops uvicorn, saying what to run."""
    shell.authdb("migrate")
    server = start_server(shell, free_port(), wait=False)
    try:
        assert server.process.wait(timeout=90) != 0
    finally:
        server.stop()
    assert "alembic -c examples/todo/alembic.ini upgrade head" in server.output()
