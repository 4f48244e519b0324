"""What an application needs to keep its own tables and migrations beside authdb's.

- ``Base``: declare the app's models on it, so that ``ForeignKey("users.id")`` and
  ``relationship("User")`` resolve (``User`` is authdb's model of the ``users`` table).
- ``include_object`` and ``include_name``: give them to ``context.configure`` in the app's
  Alembic ``env.py`` so that autogenerate never proposes anything about authdb's tables or its
  version table (``authdb_alembic_version``); ``AUTHDB_TABLES`` names those tables.
- ``upgrade_authdb(connection)``: what ``authdb migrate`` does, on the app's own Alembic
  connection, so that the app's migrations (whose tables reference ``users.id``) can run first;
  ``is_alembic_upgrade()`` says whether the running Alembic command is an online ``upgrade``
  (the only one that should change authdb's tables).
- ``UTCDateTime``: the column type of authdb's own times, timezone-aware (UTC) on SQLite too.

authdb keeps its revision in ``authdb_alembic_version``; the app's Alembic keeps the default
``alembic_version``, and neither ever sees the other's revisions.
"""

from __future__ import annotations

import alembic.command
import alembic.context
from sqlalchemy import Connection

from authdb.db.migrate import VERSION_TABLE, upgrade_connection
from authdb.db.models import AUTHDB_TABLES, Base, User, UTCDateTime

__all__ = [
    "AUTHDB_TABLES",
    "VERSION_TABLE",
    "Base",
    "UTCDateTime",
    "User",
    "check_user_not_subclassed",
    "include_name",
    "include_object",
    "is_alembic_upgrade",
    "is_authdb_table",
    "upgrade_authdb",
]


def is_authdb_table(name: str | None) -> bool:
    """True for the name of one of authdb's tables or of its Alembic version table."""
    return name == VERSION_TABLE or name in AUTHDB_TABLES


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """For the app's ``context.configure(include_object=include_object)``: False for authdb's
    tables (whether in ``Base.metadata`` or found in the database) and for its version table,
    so the app's autogenerate neither creates, alters nor drops them; True for the rest.

    To combine with an include_object of the app's own, call both and require both True.
    """
    if type_ == "table":
        return not is_authdb_table(name)
    # Columns, indexes and constraints of a skipped table are never compared; this covers
    # an index Alembic reports on its own.
    table = getattr(obj, "table", None)
    return not is_authdb_table(getattr(table, "name", None))


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """For the app's ``context.configure(include_name=include_name)``: autogenerate does not
    even reflect authdb's tables (optional with ``include_object``, and faster)."""
    return type_ != "table" or not is_authdb_table(name)


def is_alembic_upgrade() -> bool:
    """In an app's Alembic ``env.py``: True when the running command is ``alembic upgrade``
    (or ``alembic.command.upgrade(...)``) online, so that ``upgrade_authdb`` runs then and
    only then: never for ``current``, ``check``, ``revision --autogenerate``, ``downgrade``,
    ``stamp``, nor for ``upgrade --sql`` (offline mode, where nothing is executed).

    Reads ``context.config.cmd_opts`` (the ``alembic`` command line); for a command called
    from Python, which has none, the function the command handed to Alembic's environment.
    Raises nothing; outside an Alembic run, False.
    """
    try:
        if alembic.context.is_offline_mode():
            return False
        options = alembic.context.config.cmd_opts
    except NameError:  # no Alembic environment is running
        return False
    command = getattr(options, "cmd", None)
    if command is not None:
        return bool(command[0] is alembic.command.upgrade)
    environment = getattr(alembic.context, "_proxy", None)
    function = getattr(environment, "context_opts", {}).get("fn")
    # alembic.command.upgrade hands Alembic a local function of its own, named upgrade.
    return getattr(function, "__qualname__", None) == "upgrade.<locals>.upgrade"


def upgrade_authdb(connection: Connection) -> None:
    """Bring authdb's tables to this authdb's newest revision, as ``authdb migrate`` does,
    on a synchronous connection (in an app's ``env.py``, before ``context.configure``, under
    ``if is_alembic_upgrade():``).

    Commits its own transaction, unless ``connection`` is already in one (then the caller
    commits). Raises what Alembic or the database raise, with nothing of authdb's changed
    (``authdb.db.migrate.LegacyRevisionError`` for an earlier authdb's revision it cannot
    tell).
    """
    if connection.in_transaction():
        upgrade_connection(connection)
        return
    with connection.begin():
        upgrade_connection(connection)


def check_user_not_subclassed() -> None:
    """Raise ``TypeError`` naming a mapped subclass of ``User``, if the app declared one.

    authdb builds the user it hands to routes from the ``users`` table's own columns, so a
    subclass (which adds columns or a table authdb does not know) would break every
    authenticated request. The app's fields belong in ``Auth(profile=...)``, its tables in
    models of its own with ``ForeignKey("users.id")``.
    """
    for mapper in Base.registry.mappers:
        cls = mapper.class_
        if cls is not User and issubclass(cls, User):
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} subclasses authdb's User, which authdb "
                "does not support: give the user your own fields with Auth(profile=YourModel), "
                'or keep them in a table of your own with ForeignKey("users.id")'
            )
