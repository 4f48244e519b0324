"""Running Alembic programmatically on an async engine.

authdb records its revision in its own table, ``authdb_alembic_version``, so that an
application's Alembic (which uses ``alembic_version``) shares the database without either
tripping over the other's revision. Earlier releases of authdb used ``alembic_version``; ``upgrade``
moves such a database's revision to the new table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import alembic.context
import alembic.op
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

_MIGRATIONS = Path(__file__).parent / "migrations"

VERSION_TABLE = "authdb_alembic_version"
"""The table holding authdb's schema revision."""

LEGACY_VERSION_TABLE = "alembic_version"
"""Where earlier releases of authdb kept their revision: Alembic's default, which an app's
Alembic uses too."""

_LEGACY = sa.table(LEGACY_VERSION_TABLE, sa.column("version_num", sa.String(32)))


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str | None:
    """The newest revision this version of authdb ships."""
    return _script().get_current_head()


@cache
def authdb_revisions() -> frozenset[str]:
    """Every revision id in authdb's own migrations (to tell them from an app's)."""
    return frozenset(script.revision for script in _script().walk_revisions())


def _read_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


class LegacyRevisionError(RuntimeError):
    """authdb's tables exist, without ``authdb_alembic_version``, and ``alembic_version`` (where
    an earlier authdb kept its revision) does not say unambiguously which revision they are at.
    The message is one line: the rows found, and what to do."""


# What each revision an earlier authdb may have recorded in alembic_version added, and that a
# later one kept: the shape of authdb's tables tells their revision. authdb_meta is the
# first revision's; a table alone is (table, None).
_SHAPES: tuple[tuple[str, str, str | None], ...] = (
    ("0001", "authdb_meta", None),
    ("0002", "users", "pending_email"),
    ("0003", "auth_sessions", "cookie_hash"),
    ("0004", "users", "mfa_enabled"),
    ("0005", "signing_keys", None),
    ("0006", "passkeys", None),
    ("0007", "audit_events", "chain_seq"),
    ("0008", "users", "profile"),
    ("0009", "oauth_identities", None),
    ("0010", "auth_changes", None),
)


def _shape_revision(connection: Connection) -> str | None:
    """The revision whose shape authdb's tables have (everything up to it, nothing after);
    None when they match none (a part missing, or a later part without an earlier one)."""
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names())
    columns: dict[str, set[str]] = {}

    def present(table: str, column: str | None) -> bool:
        if table not in tables:
            return False
        if column is None:
            return True
        if table not in columns:
            columns[table] = {c["name"] for c in inspector.get_columns(table)}
        return column in columns[table]

    found = [present(table, column) for _, table, column in _SHAPES]
    count = found.index(False) if False in found else len(found)
    if count == 0 or any(found[count:]):
        return None
    return _SHAPES[count - 1][0]


def _legacy_rows(connection: Connection) -> list[str]:
    if not sa.inspect(connection).has_table(LEGACY_VERSION_TABLE):
        return []
    return sorted(connection.execute(sa.select(_LEGACY.c.version_num)).scalars())


def _read_legacy_revision(connection: Connection) -> str | None:
    """authdb's revision in ``alembic_version``, for a database whose authdb tables have no
    ``authdb_alembic_version``: the row naming the revision those tables' shape is at. None
    when authdb has no tables here (an app's own "0001" then is not ours) or its version
    table exists.

    Raises ``LegacyRevisionError`` when no row is that revision (an app's revision id that
    equals one of authdb's, or authdb's row missing): moving a guess would make authdb run
    the wrong migrations on its tables.
    """
    inspector = sa.inspect(connection)
    # authdb_meta exists from authdb's first revision on.
    if inspector.has_table(VERSION_TABLE) or not inspector.has_table("authdb_meta"):
        return None
    rows = _legacy_rows(connection)
    shape = _shape_revision(connection)
    if shape is not None and shape in rows:
        # Any other row is the app's, even one that looks like an authdb revision: rows are
        # unique, and authdb's tables can be at one revision only.
        return shape
    held = f"holds {', '.join(rows)}" if rows else "is missing or empty"
    at = f"are at revision {shape}" if shape else "match no revision of authdb's"
    raise LegacyRevisionError(
        f"cannot tell authdb's revision: {VERSION_TABLE} is missing, {LEGACY_VERSION_TABLE} "
        f"{held}, and authdb's tables {at}; create {VERSION_TABLE} (version_num VARCHAR(32) "
        "PRIMARY KEY) holding the revision authdb's tables are at, remove that row from "
        f"{LEGACY_VERSION_TABLE}, and run `authdb migrate` again"
    )


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision in authdb's version table: None for an empty or foreign database, and
    for one whose revision is still in the old ``alembic_version`` (see ``legacy_revision``),
    which needs ``authdb migrate`` all the same."""
    async with engine.connect() as connection:
        return await connection.run_sync(_read_revision)


async def legacy_revision(engine: AsyncEngine) -> str | None:
    """authdb's revision as earlier releases of authdb recorded it, in ``alembic_version``, if the
    database has not been upgraded since; None otherwise.

    Raises ``LegacyRevisionError`` when authdb's tables exist but that revision cannot be told
    (see ``upgrade_connection``)."""
    async with engine.connect() as connection:
        if await connection.run_sync(_read_revision) is not None:
            return None
        return await connection.run_sync(_read_legacy_revision)


async def is_up_to_date(engine: AsyncEngine) -> bool:
    """True when authdb's version table holds the newest revision this authdb ships."""
    return await current_revision(engine) == head_revision()


def _move_legacy_revision(connection: Connection) -> None:
    """Move authdb's revision from ``alembic_version`` to its own table; drop
    ``alembic_version`` only if nothing else (an app's revision) is left in it."""
    revision = _read_legacy_revision(connection)
    if revision is None:
        return
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    context.stamp(_script(), revision)
    connection.execute(_LEGACY.delete().where(_LEGACY.c.version_num == revision))
    left = connection.scalar(sa.select(sa.func.count()).select_from(_LEGACY))
    if not left:
        sa.Table(LEGACY_VERSION_TABLE, sa.MetaData()).drop(connection)


@contextmanager
def _outer_alembic_run_kept() -> Iterator[None]:
    """Alembic keeps the running environment in module globals (``alembic.context``,
    ``alembic.op``) and clears them when a run ends; called from an app's own env.py, authdb's
    run must hand the app's environment back."""
    saved = [getattr(module, "_proxy", None) for module in (alembic.context, alembic.op)]
    try:
        yield
    finally:
        for proxy in saved:
            if proxy is not None:
                proxy._install_proxy()


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Bring authdb's schema to ``revision`` on a synchronous connection, inside the
    transaction the caller holds (nothing is committed here). Moves a revision left in
    ``alembic_version`` by an earlier authdb to ``authdb_alembic_version`` first: the row
    naming the revision whose shape authdb's tables have.

    Raises ``LegacyRevisionError`` (nothing changed) when authdb's tables exist without
    ``authdb_alembic_version`` and no row of ``alembic_version`` is their revision. Raises
    whatever Alembic or the database raise; the caller's transaction then rolls back as a whole.
    """
    _move_legacy_revision(connection)
    with _outer_alembic_run_kept():
        command.upgrade(_config(connection), revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction; adopts a FastAPI-tutorial
    ``users`` table in place and moves an earlier authdb's revision to authdb's version table."""
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_connection, revision)
