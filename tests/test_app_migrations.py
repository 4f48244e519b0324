"""The README's recipe for an app's own tables and migrations, end to end, on both databases.

A small app (in its own folder, run in subprocesses as its developer would) declares a
``todos`` table on authdb's ``Base`` with ``ForeignKey("users.id", ondelete="CASCADE")``,
makes its Alembic environment with ``alembic init -t async`` and the README's ``env.py``, and
autogenerates its first migration: only ``todos``, nothing about authdb's tables. Its
migrations then run after ``authdb migrate``, before it on a new database, and before it on a
database an earlier authdb left (its revision in ``alembic_version``). Last, the app serves
requests: ``auth.db_session`` for its queries and the injected user in its relationship.

Subprocesses keep the app's models out of this process's ``Base.metadata``, which other
tests read as authdb's tables.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, inspect, text

from authdb.db import migrate
from authdb.db.engine import create_engine
from tests.cli import run_cli, subprocess_env
from tests.conftest import pg_database
from tests.test_version_table import ROUND_1, legacy_database

ALEMBIC = str(Path(sys.executable).with_name("alembic"))
AUTHDB_TABLE_NAMES = (
    "users",
    "auth_sessions",
    "refresh_tokens",
    "email_tokens",
    "audit_events",
    "authdb_meta",
    "signing_keys",
    "passkeys",
    migrate.VERSION_TABLE,
)

MODELS = """\
from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from authdb.db.schema import Base, User


class Todo(Base):
    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(primary_key=True)
    # users.id is a BIGINT on PostgreSQL: the same type here.
    owner_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(200))
    owner: Mapped[User] = relationship("User")
"""

# The README's env.py ("Your tables and migrations"), the app's package being todo_app.
ENV = """\
import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection

import todo_app.models  # noqa: F401  (the app's models join Base.metadata)
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
    fileConfig(context.config.config_file_name)  # alembic's usual log lines
url = Settings().database_url  # AUTHDB_DATABASE_URL, or .env, as authdb reads it


def configure(**options: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        include_object=include_object,  # leave authdb's tables to `authdb migrate`
        include_name=include_name,
        render_as_batch=True,  # SQLite alters tables by copying them
        **options,
    )


def run_migrations(connection: Connection) -> None:
    if is_alembic_upgrade():  # not for current, check, revision, downgrade, stamp
        upgrade_authdb(connection)  # authdb's tables first: the app's refer to users.id
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def main() -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    # `alembic upgrade head --sql`: the app's SQL only (authdb's is `authdb migrate`'s).
    configure(dialect_name=async_url(url).get_backend_name(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(main())
"""

APP = '''\
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from authdb import Auth
from authdb.db.schema import User
from todo_app.models import Todo

auth = Auth()
app = FastAPI(lifespan=auth.lifespan)
app.include_router(auth.router)
CurrentUser = Annotated[User, Depends(auth.current_active_user)]
Db = Annotated[AsyncSession, Depends(auth.db_session)]


@app.post("/todos")
async def add_todo(title: str, user: CurrentUser, db: Db) -> dict[str, object]:
    """The README's way."""
    todo = Todo(title=title, owner=await db.merge(user, load=False))
    db.add(todo)
    await db.commit()
    return {"id": todo.id, "owner": todo.owner.username, "owner_id": todo.owner_id}


@app.post("/todos/plain")
async def add_todo_plain(title: str, db: Db, user: CurrentUser) -> dict[str, object]:
    """The injected user as it is (the session resolved before the user, this time)."""
    todo = Todo(title=title, owner=user)
    db.add(todo)
    await db.commit()
    return {"id": todo.id, "owner": todo.owner.username}


@app.post("/todos/after-reading-the-user")
async def add_todo_after_reading(title: str, user: CurrentUser, db: Db) -> dict[str, object]:
    """The app's session has loaded the same user by its own query: with auth.db_session in
    the same request, the injected user is that session's own instance of the row."""
    mine = await db.get(User, user.id)
    assert mine is user
    assert await db.merge(user, load=False) is user
    todo = Todo(title=title, owner=user)
    db.add(todo)
    await db.commit()
    return {"id": todo.id, "owner": todo.owner.username}


@app.get("/todos")
async def list_todos(user: CurrentUser, db: Db) -> list[dict[str, object]]:
    query = (
        select(Todo)
        .where(Todo.owner_id == user.id)
        .options(selectinload(Todo.owner))
        .order_by(Todo.id)
    )
    return [{"title": t.title, "owner": t.owner.username} for t in await db.scalars(query)]
'''

# Drives the app in-process (httpx over ASGI), printing what it saw as one JSON line.
DRIVE = """\
import asyncio
import json

import httpx
from sqlalchemy import select

from authdb.services import provisioning
from authdb.services.core import CLI_CLIENT
from todo_app.main import app, auth
from todo_app.models import Todo

PASSWORD = "correct horse battery staple"


async def main() -> None:
    seen = {}
    async with auth.lifespan(app):
        for name in ("alice", "bob", "carol"):
            await provisioning.create_user(
                auth.core, username=name, password=PASSWORD, client=CLI_CLIENT,
                email=f"{name}@example.com", is_verified=True, is_superuser=name == "carol",
            )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            async def bearer(name):
                r = await c.post("/token", data={"username": name, "password": PASSWORD})
                return {"Authorization": "Bearer " + r.json()["access_token"]}

            alice, bob, carol = [await bearer(name) for name in ("alice", "bob", "carol")]
            r = await c.post("/todos", params={"title": "milk"}, headers=alice)
            seen["add"] = [r.status_code, r.json()]
            r = await c.post("/todos/plain", params={"title": "eggs"}, headers=alice)
            seen["add_plain"] = [r.status_code, r.json()]
            r = await c.post(
                "/todos/after-reading-the-user", params={"title": "tea"}, headers=bob
            )
            seen["add_after_reading"] = [r.status_code, r.json()]
            r = await c.get("/todos", headers=alice)
            seen["alice_todos"] = [r.status_code, r.json()]
            r = await c.get("/todos", headers=bob)
            seen["bob_todos"] = [r.status_code, r.json()]
            bob_id = (await c.get("/users/me", headers=bob)).json()["id"]
            r = await c.delete(f"/users/{bob_id}", headers=carol)
            seen["delete_bob"] = r.status_code
        async with auth.core.sessionmaker() as db:
            seen["todos_left"] = list(await db.scalars(select(Todo.title).order_by(Todo.id)))
    print(json.dumps(seen))


asyncio.run(main())
"""


def _write_app(folder: Path) -> None:
    """The app's package and its Alembic environment, as a developer would set them up."""
    package = folder / "todo_app"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODELS)
    (package / "main.py").write_text(APP)
    (folder / "drive.py").write_text(DRIVE)
    _run([ALEMBIC, "init", "-t", "async", "migrations"], folder, url=None)
    (folder / "migrations" / "env.py").write_text(ENV)


def _run(
    args: list[str], folder: Path, url: str | None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {"AUTHDB_DATABASE_URL": url} if url else {}
    env["PYTHONPATH"] = str(folder)
    result = subprocess.run(
        args,
        cwd=folder,
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


async def _alembic(
    folder: Path, url: str | None, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``alembic ARGS`` in the app's folder; ``url`` None: from the folder's ``.env`` only."""
    return await asyncio.to_thread(_run, [ALEMBIC, *args], folder, url, check=check)


async def _authdb_migrate(url: str) -> None:
    result = await asyncio.to_thread(run_cli, ["migrate"], env={"AUTHDB_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"database is at revision {migrate.head_revision()}\n"


async def _versions(url: str) -> dict[str, list[str]]:
    """What each version table there is holds: authdb's own, and Alembic's default."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            found = {}
            for table in sorted({migrate.VERSION_TABLE, "alembic_version"} & names):
                rows = await connection.execute(text(f"SELECT version_num FROM {table}"))  # noqa: S608
                found[table] = list(rows.scalars())
            return found
    finally:
        await engine.dispose()


def _operations(script: str) -> list[str]:
    """The Alembic operations of a migration script, one line each."""
    starts = ("op.", "batch_op.", "with op.")
    return [line.strip() for line in script.splitlines() if line.strip().startswith(starts)]


@pytest.fixture(params=["sqlite", "postgresql"])
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Three fresh databases of one backend."""
    if request.param == "sqlite":
        yield [f"sqlite+aiosqlite:///{tmp_path / f'db{n}.sqlite'}" for n in range(3)]
        return
    async with pg_database() as a, pg_database() as b, pg_database() as c:
        yield [a, b, c]


async def test_the_apps_tables_and_migrations_live_beside_authdbs(
    databases: list[str], tmp_path: Path
) -> None:
    after, before, before_legacy = databases
    folder = tmp_path / "app"
    _write_app(folder)

    # 1. authdb migrate, then the app's first migration by autogenerate: only its table.
    await _authdb_migrate(after)
    await _alembic(folder, after, "revision", "--autogenerate", "-m", "todos")
    [script_path] = (folder / "migrations" / "versions").glob("*.py")
    script = script_path.read_text()
    app_revision = re.search(r"^revision: str = '(\w+)'", script, re.M)
    assert app_revision is not None, script
    operations = _operations(script)
    assert operations[0] == "op.create_table('todos',", script
    assert (
        "batch_op.create_index(batch_op.f('ix_todos_owner_id'), ['owner_id'], unique=False)"
        in operations
    )
    assert operations[-1] == "op.drop_table('todos')"
    tables = {
        name
        for line in operations
        for name in re.findall(r"op\.batch_alter_table\('(\w+)'|op\.\w+_table\('(\w+)'", line)
        for name in name
        if name
    }
    assert tables == {"todos"}, script
    for line in operations:
        assert not any(f"'{name}'" in line for name in AUTHDB_TABLE_NAMES), line
    assert "sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='CASCADE')" in script
    upgraded = await _alembic(folder, after, "upgrade", "head")
    # Alembic's usual log lines (the recipe's fileConfig).
    assert f"Running upgrade  -> {app_revision.group(1)}, todos" in upgraded.stderr
    await _alembic(folder, after, "check")  # nothing left to propose, authdb's tables included

    # 2. On a new database the app's migrations go first (they bring authdb's tables along).
    await _alembic(folder, before, "upgrade", "head")
    await _authdb_migrate(before)  # nothing left for it to do
    await _alembic(folder, before, "check")

    # 3. And on a database an earlier authdb left, whose alembic_version holds authdb's revision.
    await legacy_database(before_legacy)
    assert await _versions(before_legacy) == {"alembic_version": [ROUND_1]}
    await _alembic(folder, before_legacy, "upgrade", "head")
    await _authdb_migrate(before_legacy)
    await _alembic(folder, before_legacy, "check")

    for url in databases:
        assert await _versions(url) == {
            migrate.VERSION_TABLE: [migrate.head_revision()],
            "alembic_version": [app_revision.group(1)],
        }
        current = await _alembic(folder, url, "current")
        assert current.stdout.split() == [app_revision.group(1), "(head)"]

    # 4. The app at work: its session, its table, the injected user in its relationship.
    result = await asyncio.to_thread(_run, [sys.executable, "drive.py"], folder, after)
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["add"][0] == 200, seen
    assert seen["add"][1]["owner"] == "alice"
    assert seen["add_plain"] == [200, {"id": 2, "owner": "alice"}], seen
    assert seen["add_after_reading"] == [200, {"id": 3, "owner": "bob"}], seen
    assert seen["alice_todos"] == [
        200,
        [{"title": "milk", "owner": "alice"}, {"title": "eggs", "owner": "alice"}],
    ]
    assert seen["bob_todos"] == [200, [{"title": "tea", "owner": "bob"}]]
    # Deleting a user deletes their rows of the app's table (ondelete="CASCADE").
    assert seen["delete_bob"] == 204
    assert seen["todos_left"] == ["milk", "eggs"]


async def _authdb_one_revision_back(url: str) -> None:
    """authdb's own downgrade by one revision: the database of an app that has just upgraded
    authdb and not migrated yet."""

    def downgrade(connection: Connection) -> None:
        command.downgrade(migrate._config(connection), "-1")

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
    finally:
        await engine.dispose()


async def test_only_alembic_upgrade_changes_authdbs_tables(
    databases: list[str], tmp_path: Path
) -> None:
    """The recipe's env.py upgrades authdb's schema for ``alembic upgrade`` alone: ``current``,
    ``check``, ``revision --autogenerate`` and ``upgrade --sql`` (offline, the app's SQL
    printed) leave a database behind authdb's head, or an earlier authdb's, as it is. The
    database URL is in the app's ``.env`` only, as authdb's settings read it."""
    behind, legacy = databases[:2]
    head = migrate.head_revision()
    previous = next(
        s.down_revision for s in migrate._script().walk_revisions() if s.revision == head
    )
    folder = tmp_path / "app"
    _write_app(folder)
    dotenv = folder / ".env"
    dotenv.write_text(f"AUTHDB_DATABASE_URL={behind}\n")

    await _authdb_migrate(behind)
    await _alembic(folder, None, "revision", "--autogenerate", "-m", "todos")
    [script_path] = (folder / "migrations" / "versions").glob("*.py")
    app_revision = re.search(r"^revision: str = '(\w+)'", script_path.read_text(), re.M)
    assert app_revision is not None
    app_head = app_revision.group(1)
    await _alembic(folder, None, "upgrade", "head")
    await _authdb_one_revision_back(behind)
    at_previous = {migrate.VERSION_TABLE: [previous], "alembic_version": [app_head]}
    assert await _versions(behind) == at_previous

    current = await _alembic(folder, None, "current")
    assert current.stdout.split() == [app_head, "(head)"]
    assert "Context impl" in current.stderr  # Alembic's log lines
    check = await _alembic(folder, None, "check")
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    offline = await _alembic(folder, None, "upgrade", "head", "--sql")
    assert "CREATE TABLE todos" in offline.stdout
    assert "CREATE TABLE users" not in offline.stdout  # authdb's SQL is not the app's
    await _alembic(folder, None, "revision", "--autogenerate", "-m", "nothing")
    for script in (folder / "migrations" / "versions").glob("*nothing*.py"):
        script.unlink()
    for name in ("current", "check"):  # the same commands called from Python
        await _from_python(folder, f"command.{name}(Config('alembic.ini'))")
    await _alembic(folder, None, "downgrade", "base")  # the app's tables only
    assert await _versions(behind) == {migrate.VERSION_TABLE: [previous], "alembic_version": []}

    upgraded = await _alembic(folder, None, "upgrade", "head")
    log = upgraded.stderr
    assert log.index(f"Running upgrade {previous} -> {head}") < log.index(  # authdb's first
        f"Running upgrade  -> {app_head}"
    )
    assert await _versions(behind) == {
        migrate.VERSION_TABLE: [head],
        "alembic_version": [app_head],
    }

    # An earlier authdb's database: its revision stays in alembic_version until an upgrade.
    await legacy_database(legacy)
    dotenv.write_text(f"AUTHDB_DATABASE_URL={legacy}\n")
    for args in (("current",), ("check",), ("upgrade", "head", "--sql")):
        await _alembic(folder, None, *args, check=False)
        assert await _versions(legacy) == {"alembic_version": [ROUND_1]}, args
    await _from_python(folder, "command.upgrade(Config('alembic.ini'), 'head')")
    assert await _versions(legacy) == {
        migrate.VERSION_TABLE: [head],
        "alembic_version": [app_head],
    }


async def _from_python(folder: Path, call: str) -> None:
    """An Alembic command called from Python (no command line: ``cmd_opts`` is None)."""
    code = f"from alembic import command\nfrom alembic.config import Config\n{call}\n"
    await asyncio.to_thread(_run, [sys.executable, "-c", code], folder, None)


def test_the_docs_show_this_recipe() -> None:
    """docs/extending.md's env.py is the one this module runs (the app's package aside)."""
    docs = (Path(__file__).parent.parent / "docs" / "extending.md").read_text()
    section = docs.split("## Your tables and migrations", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert ENV.replace("todo_app.models", "myapp.models") in blocks


SUBCLASS = """\
import asyncio
import sys

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from authdb import Auth, Settings
from authdb.db.schema import User

settings = Settings(_env_file=None, secret_key="s" * 40)
auth = Auth(settings)  # before the subclass: startup still catches it


class AppUser(User):
    nickname: Mapped[str | None] = mapped_column(String(40))


for attempt in (lambda: Auth(settings), lambda: asyncio.run(auth.startup())):
    try:
        attempt()
    except TypeError as exc:
        print(exc)
    else:
        sys.exit("no error")
"""


def test_subclassing_user_is_refused_with_a_pointer_to_profile(tmp_path: Path) -> None:
    """Not a 500 on every authenticated request later: Auth() or startup says what to do."""
    (tmp_path / "subclass.py").write_text(SUBCLASS)
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    result = _run([sys.executable, "subclass.py"], tmp_path, url)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert line.startswith("__main__.AppUser subclasses authdb's User"), line
        assert "Auth(profile=YourModel)" in line
        assert 'ForeignKey("users.id")' in line
