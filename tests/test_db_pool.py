"""Database connections are bounded by settings, and authdb works behind PgBouncer.

``AUTHDB_DATABASE_POOL_SIZE`` caps what one process holds, both pools together, as PostgreSQL
itself counts it (pg_stat_activity). ``AUTHDB_DATABASE_PGBOUNCER=true`` is tested against a
real PgBouncer (``apt-get install -y pgbouncer``) in transaction-pooling mode.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from authdb.db.engine import PoolBudget
from tests.cli import run_cli
from tests.conftest import PASSWORD, PG_ADMIN_DSN, Harness, free_port

MakeHarness = Callable[..., Awaitable[Harness]]


def test_the_pool_size_is_shared_between_the_two_pools() -> None:
    # Sign-ins get a connection of their own while the engine keeps two (PostgreSQL only).
    assert PoolBudget.split(10) == PoolBudget(engine=6, reader=3, sign_in=1)
    assert PoolBudget.split(2) == PoolBudget(engine=1, reader=1)
    assert PoolBudget.split(4) == PoolBudget(engine=2, reader=1, sign_in=1)
    assert PoolBudget.split(10, sqlite=True) == PoolBudget(engine=9, reader=1)
    with pytest.raises(ValueError, match="at least 2"):
        PoolBudget.split(1)
    # The session cache's LISTEN connection (PostgreSQL) is one of them.
    assert PoolBudget.split(10, listener=True) == PoolBudget(
        engine=5, reader=3, listener=1, sign_in=1
    )
    assert PoolBudget.split(3, listener=True) == PoolBudget(engine=1, reader=1, listener=1)
    assert PoolBudget.split(4, listener=True) == PoolBudget(engine=2, reader=1, listener=1)
    for total in range(2, 60):
        for listener in (False, True):
            if total < 2 + listener:
                continue
            budget = PoolBudget.split(total, listener=listener)
            assert budget.engine + budget.reader + budget.listener + budget.sign_in == total
            assert budget.engine >= 1 and budget.reader >= 1
    with pytest.raises(ValueError, match="at least 3"):
        PoolBudget.split(2, listener=True)


async def test_the_engine_pool_never_overflows(make_harness: MakeHarness) -> None:
    harness = await make_harness(database_pool_size=5)
    pool = harness.auth.core.engine.pool
    sqlite = harness.auth.auto_migrate
    expected = PoolBudget.split(5, sqlite=sqlite, listener=not sqlite).engine
    assert pool.size() == expected  # type: ignore[attr-defined]
    assert pool._max_overflow == 0  # type: ignore[attr-defined]


async def _load(harness: Harness, bearer: dict[str, str], rounds: int) -> Counter[int]:
    """Logins, session checks, session listings and refreshes, all at once."""
    client = harness.client
    login = {"username": "alice", "password": PASSWORD}
    refresh_tokens = [(await harness.login())["refresh_token"] for _ in range(rounds)]
    calls: list[Awaitable[httpx.Response]] = []
    for refresh_token in refresh_tokens:
        calls += [
            client.post("/token", data=login),
            client.get("/users/me", headers=bearer),
            client.get("/users/me/sessions", headers=bearer),
            client.post(
                "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
            ),
        ]
    responses = await asyncio.gather(*calls)
    return Counter(response.status_code for response in responses)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("size", [4, 5])  # 5 spares sign-ins a connection of their own
async def test_connections_under_concurrent_load_stay_within_the_pool_size(
    make_harness: MakeHarness, database_url: str, size: int
) -> None:
    harness = await make_harness(database_pool_size=size)
    await harness.create_user("alice")
    bearer = await harness.bearer()
    database = make_url(database_url).database
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            count = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
            )
            peak = max(peak, count)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    try:
        statuses = await _load(harness, bearer, rounds=15)
    finally:
        done.set()
        await watcher
        await admin.close()
    assert statuses == Counter({200: 60})
    assert 2 <= peak <= size  # the pools in use, never more than the setting together


# --- PgBouncer in transaction-pooling mode -------------------------------------------------------


@pytest.fixture
def pgbouncer(tmp_path: Path) -> Iterator[int]:
    """A real PgBouncer (transaction pooling, 2 server connections) in front of PostgreSQL."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    assert Path(binary).exists(), "PgBouncer is needed: apt-get install -y pgbouncer"
    port = free_port()
    directory = tmp_path / "pgbouncer"
    directory.mkdir()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        "* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        # Few server connections, so that clients really share them between transactions.
        "default_pool_size = 2\n"
        "max_client_conn = 200\n"
    )
    # PgBouncer refuses to run as root (a CI container often is): it reads its files, then
    # drops to another user.
    as_user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = (tmp_path / "pgbouncer.log").open("w")
    process = subprocess.Popen(
        [binary, *as_user, str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_listening(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("pgbouncer did not start listening")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_behind_pgbouncer_in_transaction_mode_everything_works(
    make_harness: MakeHarness, database_url: str, pgbouncer: int
) -> None:
    via_pgbouncer = make_url(database_url).set(port=pgbouncer).render_as_string(False)
    # Migrated, started and used through PgBouncer only.
    harness = await make_harness(database_url=via_pgbouncer, database_pgbouncer=True)
    await harness.create_user("alice")
    bearer = await harness.bearer()
    # Many client connections over two server connections: every statement of one
    # transaction must find its prepared form, whichever server the transaction got.
    statuses = await _load(harness, bearer, rounds=15)
    assert statuses == Counter({200: 60})
    logout = await harness.client.post("/logout", headers=bearer)
    assert logout.status_code == 204
    assert (await harness.client.get("/users/me", headers=bearer)).status_code == 401
    # Nothing was left prepared on PgBouncer's server connections: two transactions at once
    # hold both of them and look.
    dsn = make_url(via_pgbouncer).set(drivername="postgresql").render_as_string(False)
    both_inside = asyncio.Barrier(2)
    left = await asyncio.gather(
        _prepared_statements(dsn, both_inside), _prepared_statements(dsn, both_inside)
    )
    assert len({pid for pid, _ in left}) == 2
    assert [count for _, count in left] == [0, 0]


async def _prepared_statements(dsn: str, both_inside: asyncio.Barrier) -> tuple[int, int]:
    """(server pid, prepared statements it holds), seen from inside one transaction."""
    connection = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        async with connection.transaction():
            pid = await connection.fetchval("SELECT pg_backend_pid()")
            await both_inside.wait()  # each transaction holds its own server connection
            count = await connection.fetchval("SELECT count(*) FROM pg_prepared_statements")
        return int(pid), int(count)
    finally:
        await connection.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_cli_migrates_through_pgbouncer(database_url: str, pgbouncer: int) -> None:
    via_pgbouncer = make_url(database_url).set(port=pgbouncer).render_as_string(False)
    env = {"AUTHDB_DATABASE_URL": via_pgbouncer, "AUTHDB_DATABASE_PGBOUNCER": "true"}
    for _ in range(2):  # the second run reads the revision again, in new transactions
        migrated = run_cli(["migrate"], env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert "database is at revision" in migrated.stdout
