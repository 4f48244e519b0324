"""Outages answer 503 with Retry-After, never 500, and the service recovers by itself.

The database is made unreachable for real: PostgreSQL sits behind a TCP proxy the test takes
down and brings back; SQLite's directory is moved away while the app runs. PostgreSQL also
terminates the backends, as a restart or an administrator does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from authdb.db.engine import create_engine
from authdb.db.outage import is_outage
from authdb.db.sign_in_store import SignInStore
from authdb.http.errors import install_error_handlers
from tests.conftest import PASSWORD, PG_ADMIN_DSN, Harness, free_port, pg_database
from tests.netfaults import TcpProxy

MakeHarness = Callable[..., Awaitable[Harness]]
UNAVAILABLE = {"detail": "Service unavailable"}


# --- a database outage the test controls, on each backend -----------------------------------


class PostgresOutage:
    """PostgreSQL behind a proxy: down refuses new connections and cuts the open ones."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy

    async def begin(self) -> None:
        await self.proxy.down()

    async def end(self) -> None:
        await self.proxy.up()


@dataclass
class SQLiteOutage:
    """The database's directory moved away while the app runs.

    SQLite keeps files it has open, so the app's idle pooled connections would still reach the
    moved file; they are taken (as requests in flight would hold them), which leaves the app to
    open new connections, and those fail: "unable to open database file".
    """

    directory: Path
    engine: AsyncEngine
    sign_in: SignInStore
    held: list[AsyncConnection] = field(default_factory=list)

    async def begin(self) -> None:
        self.directory.rename(self.directory.with_name("moved-away"))
        idle = self.engine.pool.checkedin()  # type: ignore[attr-defined]
        self.held = [await self.engine.connect() for _ in range(idle)]
        # The native sign-in's connections likewise: closed, so that it must open new ones.
        await self.sign_in.close()

    async def end(self) -> None:
        self.directory.with_name("moved-away").rename(self.directory)
        for connection in self.held:
            await connection.close()
        self.held = []


Outage = PostgresOutage | SQLiteOutage


@pytest.fixture
async def outage_harness(
    request: pytest.FixtureRequest, make_harness: MakeHarness, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Harness, Outage]]:
    """A started app whose database the test can make unreachable, and the means to do it."""
    if database_url.startswith("sqlite"):
        directory = tmp_path / "data"
        directory.mkdir()
        harness = await make_harness(database_url=f"sqlite+aiosqlite:///{directory / 'authdb.db'}")
        core = harness.auth.core
        yield harness, SQLiteOutage(directory, core.engine, core.sign_in)
        return
    proxy = await TcpProxy(target_port=5432).up()
    via_proxy = make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)
    try:
        yield await make_harness(database_url=via_proxy), PostgresOutage(proxy)
    finally:
        await proxy.down()


async def _probe(harness: Harness, tokens: dict[str, Any]) -> dict[str, httpx.Response]:
    """One request of each kind that needs the database."""
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    client = harness.client
    return {
        "login": await client.post("/token", data={"username": "alice", "password": PASSWORD}),
        "refresh": await client.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        ),
        "register": await client.post(
            "/register",
            json={"username": "newbie", "email": "newbie@example.com", "password": PASSWORD},
        ),
        "me": await client.get("/users/me", headers=bearer),
        "sessions": await client.get("/users/me/sessions", headers=bearer),
        "rename": await client.patch("/users/me", json={"full_name": "Alice"}, headers=bearer),
    }


async def test_while_the_database_is_unreachable_routes_answer_503_then_recover(
    outage_harness: tuple[Harness, Outage],
) -> None:
    harness, outage = outage_harness
    await harness.create_user("alice")
    tokens = await harness.login()  # no request has needed the session check yet
    await outage.begin()
    try:
        during = await _probe(harness, tokens)
        ready = await harness.client.get("/readyz")
    finally:
        await outage.end()
    for name, response in during.items():
        assert response.status_code == 503, (name, response.text)
        assert response.json().items() >= UNAVAILABLE.items(), name
        assert int(response.headers["retry-after"]) > 0, name
        assert response.headers["cache-control"] == "no-store", name
    assert during["login"].json()["error"] == "temporarily_unavailable"
    assert ready.status_code == 503
    # Back: every route works again, without a restart.
    after = await _probe(harness, tokens)
    assert {name: r.status_code for name, r in after.items()} == {
        "login": 200,
        "refresh": 200,
        "register": 201,
        "me": 200,
        "sessions": 200,
        "rename": 200,
    }
    assert (await harness.client.get("/readyz")).status_code == 200


async def test_a_host_apps_own_route_answers_503_too(
    outage_harness: tuple[Harness, Outage],
) -> None:
    """The library's dependencies translate an outage themselves: no handler to install."""
    harness, outage = outage_harness
    auth = harness.auth
    app = FastAPI()  # an application's own, with none of authdb's error handlers
    app.include_router(auth.router)

    # A default, not Annotated: the annotation of a function defined in a test is resolved
    # in the module, where ``auth`` does not exist.
    @app.get("/items")
    async def items(user: Any = Depends(auth.current_active_user)) -> list[str]:
        return [user.username]

    await harness.create_user("alice")
    tokens = await harness.login()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await outage.begin()
        try:
            during = await client.get("/items", headers=bearer)
        finally:
            await outage.end()
        assert during.status_code == 503
        assert during.json() == UNAVAILABLE
        assert int(during.headers["retry-after"]) > 0
        assert (await client.get("/items", headers=bearer)).json() == ["alice"]


async def test_a_host_app_with_authdb_handlers_answers_503_for_its_own_queries(
    outage_harness: tuple[Harness, Outage],
) -> None:
    harness, outage = outage_harness
    engine = harness.auth.core.engine
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/count")
    async def count() -> int:
        async with engine.connect() as connection:
            return int(await connection.scalar(text("SELECT count(*) FROM users")) or 0)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await outage.begin()
        try:
            during = await client.get("/count")
        finally:
            await outage.end()
        assert (during.status_code, during.json()) == (503, UNAVAILABLE)
        assert "retry-after" in during.headers
        assert (await client.get("/count")).json() == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_terminated_backends_never_give_500(harness: Harness, database_url: str) -> None:
    await harness.create_user("alice")
    tokens = await harness.login()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await harness.client.get("/users/me", headers=bearer)).status_code == 200
    database = make_url(database_url).database
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        terminated = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    assert terminated >= 2  # the ORM's pool and the session check's
    # A request on a connection that was cut may be a 503 (retry); never a 500.
    first = [
        await harness.client.get("/users/me", headers=bearer),
        await harness.client.post("/token", data={"username": "alice", "password": PASSWORD}),
        await harness.client.get("/users/me/sessions", headers=bearer),
    ]
    assert {r.status_code for r in first} <= {200, 503}, [r.text for r in first]
    second = [
        await harness.client.get("/users/me", headers=bearer),
        await harness.client.post("/token", data={"username": "alice", "password": PASSWORD}),
        await harness.client.get("/users/me/sessions", headers=bearer),
    ]
    assert [r.status_code for r in second] == [200, 200, 200]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_database_refusing_connections_gets_503(
    make_harness: MakeHarness, database_url: str
) -> None:
    """PostgreSQL refuses a connection ("too many connections for role"): 503, then 200."""
    database = make_url(database_url).database
    role = f"{database}_app"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        # A role of its own: superusers are exempt from connection limits.
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
        owner = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}")
        try:
            await owner.execute(f'ALTER SCHEMA public OWNER TO "{role}"')
        finally:
            await owner.close()
        url = make_url(database_url).set(username=role).render_as_string(hide_password=False)
        harness = await make_harness(database_url=url)
        await harness.create_user("alice")
        assert (await _login(harness)).status_code == 200
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        refused = await _login(harness)
        assert refused.status_code == 503, refused.text
        assert "retry-after" in refused.headers
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        assert (await _login(harness)).status_code == 200
        await harness.client.aclose()
        await harness.auth.shutdown()
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def _login(harness: Harness) -> httpx.Response:
    return await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})


# --- what counts as an outage: real errors from the real drivers -----------------------------


async def test_refused_postgres_connections_are_outages() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(OSError) as raw:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/test")
    assert is_outage(raw.value)
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test")
    try:
        with pytest.raises(Exception) as through_sqlalchemy:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert is_outage(through_sqlalchemy.value)
    finally:
        await engine.dispose()


async def test_an_exhausted_pool_is_an_outage(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", pool_size=1, pool_timeout=0.05
    )
    try:
        async with engine.connect():
            with pytest.raises(Exception) as waited:
                async with engine.connect():
                    pass
        assert type(waited.value).__name__ == "TimeoutError"
        assert is_outage(waited.value)
    finally:
        await engine.dispose()


async def test_a_connection_cut_inside_a_transaction_is_an_outage() -> None:
    async with pg_database() as url:
        engine = create_engine(url)
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            async with engine.connect() as connection:
                pid = await connection.scalar(text("SELECT pg_backend_pid()"))
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                with pytest.raises(Exception) as cut:
                    for _ in range(50):  # until the client has seen the socket close
                        await connection.execute(text("SELECT 1"))
                        await asyncio.sleep(0.01)
            assert is_outage(cut.value)
        finally:
            await admin.close()
            await engine.dispose()


def test_sqlite_locked_and_unopenable_databases_are_outages(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    waiter = sqlite3.connect(path, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as locked:
        waiter.execute("INSERT INTO t VALUES (1)")
    assert "locked" in str(locked.value)
    assert is_outage(locked.value)
    holder.execute("ROLLBACK")
    with pytest.raises(sqlite3.OperationalError) as unopenable:
        sqlite3.connect(tmp_path / "no-such-directory" / "x.db")
    assert is_outage(unopenable.value)
    with pytest.raises(sqlite3.OperationalError) as missing_table:
        waiter.execute("SELECT * FROM no_such_table")
    assert not is_outage(missing_table.value)  # a bug or a missing migration: stays a 500
    holder.close()
    waiter.close()


async def test_errors_in_the_data_or_the_code_are_not_outages(harness: Harness) -> None:
    engine = harness.auth.core.engine
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE probe (x INTEGER UNIQUE)"))
        await connection.execute(text("INSERT INTO probe VALUES (1)"))
    with pytest.raises(IntegrityError) as duplicate:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO probe VALUES (1)"))
    assert not is_outage(duplicate.value)
    with pytest.raises(Exception) as syntax:
        async with engine.connect() as connection:
            await connection.execute(text("SELEC 1"))
    assert not is_outage(syntax.value)
    assert not is_outage(ValueError("bad"))
    assert not is_outage(FileNotFoundError("template.html"))
    assert not is_outage(RuntimeError("boom"))
