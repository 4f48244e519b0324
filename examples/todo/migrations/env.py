"""Alembic environment of the todo app: its tables only, in authdb's database.

``target_metadata`` is authdb's metadata with the app's models added (so autogenerate can
resolve ``ForeignKey("users.id")``), and authdb's filter keeps autogenerate from ever
proposing to create, alter or drop one of authdb's tables. The version table is the app's own
(Alembic's default, ``alembic_version``); authdb keeps ``authdb_alembic_version``.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from examples.todo import models  # noqa: F401  (the app's tables join Base.metadata)
from sqlalchemy import Connection

from authdb import Settings
from authdb.db.engine import async_url, create_engine
from authdb.db.schema import (
    Base,
    include_name,
    include_object,
    is_alembic_upgrade,
    upgrade_authdb,
)

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)  # alembic's usual log lines (alembic.ini)
# authdb's database, as authdb reads it: AUTHDB_DATABASE_URL, or the .env file.
url = Settings().database_url


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        # authdb's tables and its version table are left to authdb: autogenerate neither
        # reflects nor compares them.
        include_object=include_object,
        include_name=include_name,
        # SQLite alters tables by copying them; harmless elsewhere.
        render_as_batch=True,
        compare_type=True,
        **options,
    )


def run_offline() -> None:
    """``alembic upgrade head --sql``: print the app's SQL instead of running it (authdb's
    own schema is ``authdb migrate``'s to bring up)."""
    _configure(dialect_name=async_url(url).get_backend_name(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # On `alembic upgrade` only (never current, check, revision, downgrade, stamp): authdb's
    # tables first (what `authdb migrate` does; nothing if they are current), as the app's
    # migrations refer to users.id.
    if is_alembic_upgrade():
        upgrade_authdb(connection)
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    # authdb's engine factory: the same SQLite pragmas (foreign keys on) and timeouts.
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
