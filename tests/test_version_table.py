"""authdb keeps its revision in ``authdb_alembic_version``, on SQLite and PostgreSQL.

A database that an earlier authdb migrated (its revision in Alembic's default
``alembic_version``) reads as "needs authdb migrate", and moves to the new table on
``authdb migrate`` or on auto-migrate, in the same transaction as the rest of the upgrade.
An application's own revision in ``alembic_version`` stays where it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb import Auth, SchemaOutOfDate, Settings
from authdb.db import migrate
from authdb.db.engine import create_engine
from tests.cli import run_cli
from tests.migration_helpers import USERS, database_at
from tests.test_doctor import Run

ROUND_1 = "0007"  # the last revision an authdb with the shared version table shipped
APP_REVISION = "3f2a9c1d7b4e"  # an application's own Alembic revision


async def legacy_database(
    url: str,
    *,
    app_revision: str | None = None,
    at: str = ROUND_1,
    authdb_row: bool = True,
) -> None:
    """A database as an earlier authdb left it: authdb's tables at ``at``, that revision in
    ``alembic_version`` exactly as Alembic creates it (unless not ``authdb_row``), and
    optionally an app's revision as well."""
    await database_at(url, at, "SELECT 1")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
                    " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
                )
            )
            for revision in filter(None, (at if authdb_row else None, app_revision)):
                await connection.execute(
                    text("INSERT INTO alembic_version (version_num) VALUES (:r)"), {"r": revision}
                )
            await connection.execute(text(f"DROP TABLE {migrate.VERSION_TABLE}"))
    finally:
        await engine.dispose()


async def _state(engine: AsyncEngine) -> dict[str, Any]:
    """Which version tables exist and what they hold, and the users."""

    def tables(connection: Any) -> set[str]:
        return set(inspect(connection).get_table_names())

    async with engine.connect() as connection:
        names = await connection.run_sync(tables)
        state: dict[str, Any] = {"tables": {migrate.VERSION_TABLE, "alembic_version"} & names}
        for table in sorted(state["tables"]):
            rows = await connection.execute(text(f"SELECT version_num FROM {table}"))  # noqa: S608
            state[table] = sorted(rows.scalars())
        users = await connection.execute(text("SELECT username FROM users ORDER BY id"))
        state["users"] = list(users.scalars())
    return state


async def test_a_legacy_database_needs_migrate_and_moves_on_authdb_migrate(
    database_url: str, make_settings: Callable[..., Settings]
) -> None:
    await legacy_database(database_url)
    engine = create_engine(database_url)
    try:
        assert await migrate.current_revision(engine) is None
        assert await migrate.legacy_revision(engine) == ROUND_1
        assert not await migrate.is_up_to_date(engine)
    finally:
        await engine.dispose()
    # A server that does not migrate refuses it, as any out-of-date schema.
    auth = Auth(make_settings(), auto_migrate=False)
    with pytest.raises(SchemaOutOfDate, match="authdb migrate"):
        await auth.startup()
    await auth.shutdown()
    env = {"AUTHDB_DATABASE_URL": database_url}
    doctor = await asyncio.to_thread(Run, env)
    assert doctor.line("schema") == (
        f"error  schema: at revision {ROUND_1}, this authdb needs {migrate.head_revision()}:"
        " run `authdb migrate`"
    )

    result = await asyncio.to_thread(run_cli, ["migrate"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"database is at revision {migrate.head_revision()}\n"

    engine = create_engine(database_url)
    try:
        assert await _state(engine) == {
            "tables": {migrate.VERSION_TABLE},  # alembic_version was authdb's alone: dropped
            migrate.VERSION_TABLE: [migrate.head_revision()],
            "users": list(USERS),
        }
        assert await migrate.is_up_to_date(engine)
        assert await migrate.legacy_revision(engine) is None
    finally:
        await engine.dispose()
    again = await asyncio.to_thread(run_cli, ["migrate"], env=env)  # nothing left to do
    assert again.returncode == 0, again.stderr


async def test_a_legacy_database_moves_on_auto_migrate(
    database_url: str, make_settings: Callable[..., Settings]
) -> None:
    await legacy_database(database_url)
    auth = Auth(make_settings(), auto_migrate=True)
    await auth.startup()
    try:
        assert await migrate.is_up_to_date(auth.core.engine)
        state = await _state(auth.core.engine)
        assert state["tables"] == {migrate.VERSION_TABLE}
        assert state["users"] == list(USERS)
    finally:
        await auth.shutdown()


async def test_an_apps_own_revision_in_alembic_version_is_left_alone(database_url: str) -> None:
    await legacy_database(database_url, app_revision=APP_REVISION)
    engine = create_engine(database_url)
    try:
        assert await migrate.legacy_revision(engine) == ROUND_1
        await migrate.upgrade(engine)
        assert await _state(engine) == {
            "tables": {migrate.VERSION_TABLE, "alembic_version"},
            migrate.VERSION_TABLE: [migrate.head_revision()],
            "alembic_version": [APP_REVISION],
            "users": list(USERS),
        }
    finally:
        await engine.dispose()


async def test_a_failed_upgrade_leaves_the_revision_where_it_was(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move and the migrations are one transaction: a failure undoes the move too."""
    await legacy_database(database_url, app_revision=APP_REVISION)

    def broken_upgrade(*args: object) -> NoReturn:
        raise RuntimeError("a migration failed")

    monkeypatch.setattr(command, "upgrade", broken_upgrade)  # the one authdb's upgrade calls
    engine = create_engine(database_url)
    try:
        with pytest.raises(RuntimeError, match="a migration failed"):
            await migrate.upgrade(engine)
        assert await _state(engine) == {
            "tables": {"alembic_version"},
            "alembic_version": sorted([ROUND_1, APP_REVISION]),
            "users": list(USERS),
        }
    finally:
        await engine.dispose()


async def test_an_apps_own_database_is_not_taken_for_authdbs(database_url: str) -> None:
    """An app whose own revision ids look like authdb's ("0001"), in a database without
    authdb's tables: nothing is moved, and authdb's migrations create its tables as usual."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            )
            await connection.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
        assert await migrate.legacy_revision(engine) is None
        await migrate.upgrade(engine)
        state = await _state(engine)
        assert state["alembic_version"] == ["0001"]
        assert state[migrate.VERSION_TABLE] == [migrate.head_revision()]
    finally:
        await engine.dispose()


async def test_the_shape_of_authdbs_tables_tells_each_revision(database_url: str) -> None:
    """The rule that picks authdb's row out of alembic_version: at every revision authdb's
    tables have that revision's shape, and only that one's."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(migrate._shape_revision) is None  # empty database
        for revision in sorted(migrate.authdb_revisions()):
            await migrate.upgrade(engine, revision)
            async with engine.connect() as connection:
                assert await connection.run_sync(migrate._shape_revision) == revision
    finally:
        await engine.dispose()


async def test_an_apps_revision_id_equal_to_one_of_authdbs_is_told_apart(
    database_url: str,
) -> None:
    """alembic_version holds authdb's 0008 and the app's own 0003 (ids that collide): the row
    matching the shape of authdb's tables moves, the app's stays, on ``authdb migrate``; the
    doctor reads it the same way."""
    head = migrate.head_revision()
    await legacy_database(database_url, at=head, app_revision="0003")
    env = {"AUTHDB_DATABASE_URL": database_url}
    engine = create_engine(database_url)
    try:
        assert await migrate.legacy_revision(engine) == head
        doctor = await asyncio.to_thread(Run, env)
        assert doctor.line("schema") == (
            f"error  schema: at revision {head}, this authdb needs {head}: run `authdb migrate`"
        )
        result = await asyncio.to_thread(run_cli, ["migrate"], env=env)
        assert result.returncode == 0, result.stderr
        assert await _state(engine) == {
            "tables": {migrate.VERSION_TABLE, "alembic_version"},
            migrate.VERSION_TABLE: [head],
            "alembic_version": ["0003"],
            "users": list(USERS),
        }
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("rows", "held"),
    [
        (["0003"], "alembic_version holds 0003"),  # an app's id, authdb's own row missing
        (["0003", "0005"], "alembic_version holds 0003, 0005"),
        ([], "alembic_version is missing or empty"),
    ],
)
async def test_an_ambiguous_legacy_revision_stops_with_what_to_do(
    database_url: str, rows: list[str], held: str
) -> None:
    """authdb's tables (at ROUND_1) without authdb_alembic_version, and no row of
    alembic_version naming their revision: ``authdb migrate`` changes nothing and says why in
    one line, as does the doctor, rather than guessing (and running the wrong migrations)."""
    await legacy_database(database_url, authdb_row=False)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM alembic_version"))
            for row in rows:
                await connection.execute(
                    text("INSERT INTO alembic_version (version_num) VALUES (:r)"), {"r": row}
                )
        before = await _state(engine)
        expected = (
            f"cannot tell authdb's revision: authdb_alembic_version is missing, {held}, and"
            f" authdb's tables are at revision {ROUND_1}; create authdb_alembic_version"
            " (version_num VARCHAR(32) PRIMARY KEY) holding the revision authdb's tables are"
            " at, remove that row from alembic_version, and run `authdb migrate` again"
        )
        env = {"AUTHDB_DATABASE_URL": database_url}
        result = await asyncio.to_thread(run_cli, ["migrate"], env=env)
        assert result.returncode != 0
        assert result.stdout == ""
        assert result.stderr.strip().splitlines() == [f"error: migration failed: {expected}"]
        assert await _state(engine) == before
        with pytest.raises(migrate.LegacyRevisionError):
            await migrate.legacy_revision(engine)
        doctor = await asyncio.to_thread(Run, env)
        assert doctor.line("schema") == f"error  schema: {expected}"

        # What the message says to do, done: then authdb migrate goes on.
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "CREATE TABLE authdb_alembic_version"
                    " (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
                )
            )
            await connection.execute(
                text("INSERT INTO authdb_alembic_version VALUES (:r)"), {"r": ROUND_1}
            )
        again = await asyncio.to_thread(run_cli, ["migrate"], env=env)
        assert again.returncode == 0, again.stderr
        state = await _state(engine)
        assert state[migrate.VERSION_TABLE] == [migrate.head_revision()]
        assert state["users"] == list(USERS)
    finally:
        await engine.dispose()
