"""authdb's models and its migrations describe the same schema, on SQLite and PostgreSQL.

Alembic's autogenerate comparison of a freshly migrated database with ``Base.metadata`` (as
authdb's own env.py sees it: authdb's tables only) finds nothing, so an application's
autogenerate has no noise to filter and authdb's next migration starts from a clean diff.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.models import AUTHDB_TABLES, Base


def _authdb_only(obj: object, name: str | None, type_: str, *args: object) -> bool:
    return type_ != "table" or name in AUTHDB_TABLES


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_object": _authdb_only,
            "version_table": migrate.VERSION_TABLE,
        },
    )
    return list(compare_metadata(context, Base.metadata))


async def test_a_migrated_database_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
    finally:
        await engine.dispose()


def test_authdb_tables_are_every_table_authdb_declares() -> None:
    assert {"users", "auth_sessions", "authdb_meta", "signing_keys"} <= AUTHDB_TABLES
    assert migrate.VERSION_TABLE not in AUTHDB_TABLES  # Alembic's, not a model
