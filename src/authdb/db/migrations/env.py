"""Alembic environment: runs on the connection that ``authdb.db.migrate`` hands over.

authdb's revision lives in its own version table. ``target_metadata`` (used only by
autogenerate, when authdb's developers write a migration) is ``Base.metadata``, which may also
hold an application's models: ``include_object`` keeps the comparison to authdb's tables.
"""

from alembic import context

from authdb.db.migrate import VERSION_TABLE
from authdb.db.models import AUTHDB_TABLES, Base


def _only_authdb(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return type_ != "table" or name in AUTHDB_TABLES


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    include_object=_only_authdb,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
