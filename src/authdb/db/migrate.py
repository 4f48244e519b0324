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


def _read_legacy_revision(connection: Connection) -> str | None:
    inspector = sa.inspect(connection)
    # authdb_meta exists from authdb's first revision on: an app's own "0001" in
    # alembic_version, in a database without authdb's tables, is not ours.
    if not inspector.has_table(LEGACY_VERSION_TABLE) or not inspector.has_table("authdb_meta"):
        return None
    rows = connection.execute(sa.select(_LEGACY.c.version_num)).scalars()
    ours = sorted(set(rows) & authdb_revisions())
    return ours[0] if len(ours) == 1 else None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision in authdb's version table: None for an empty or foreign database, and
    for one whose revision is still in the old ``alembic_version`` (see ``legacy_revision``),
    which needs ``authdb migrate`` all the same."""
    async with engine.connect() as connection:
        return await connection.run_sync(_read_revision)


async def legacy_revision(engine: AsyncEngine) -> str | None:
    """authdb's revision as earlier releases of authdb recorded it, in ``alembic_version``, if the
    database has not been upgraded since; None otherwise."""
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
    if sa.inspect(connection).has_table(VERSION_TABLE):
        return
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
    ``alembic_version`` by an earlier authdb to ``authdb_alembic_version`` first.

    Raises whatever Alembic or the database raise; the caller's transaction then rolls back
    as a whole.
    """
    _move_legacy_revision(connection)
    with _outer_alembic_run_kept():
        command.upgrade(_config(connection), revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction; adopts a FastAPI-tutorial
    ``users`` table in place and moves an earlier authdb's revision to authdb's version table."""
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_connection, revision)
