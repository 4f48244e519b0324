"""`authdb doctor`'s connections check: hosts x workers x AUTHDB_DATABASE_POOL_SIZE against what
PostgreSQL lets ordinary roles open (max_connections less its reserved slots).

The thresholds are computed from the real server's own settings, so the tests hold whatever its
max_connections is; the doctor runs in process (tests/cli.py invoke_cli). Behind a real
PgBouncer (tests/test_db_pool.py's fixture) the budget is PgBouncer's.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from authdb.doctor import examine
from authdb.doctor.connections import Demand, Limits, judge
from authdb.settings import Settings
from tests import test_db_pool
from tests.cli import invoke_cli, migrated_env
from tests.conftest import PG_ADMIN_DSN, free_port

# A real PgBouncer in transaction-pooling mode in front of the test server (one fixture for both
# modules: it needs apt's pgbouncer and a free port, nothing else).
pgbouncer = test_db_pool.pgbouncer

# Random-looking, so that the secret key check passes and the exit code is the connections'.
KEY = "Zq3v9XkP2mR8tL5wN7bH4cJ6dF1gS0yE-uA_"

ADVICE = (
    "lower AUTHDB_DATABASE_POOL_SIZE, run fewer workers, raise max_connections, "
    "or put PgBouncer in front (AUTHDB_DATABASE_PGBOUNCER=true)"
)


async def _server_limits() -> tuple[int, int]:
    """The test server's (max_connections, reserved slots), read as an operator would."""
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        row = await connection.fetchrow(
            "SELECT current_setting('max_connections')::int AS max_connections, "
            "current_setting('superuser_reserved_connections')::int "
            "+ coalesce(current_setting('reserved_connections', true), '0')::int AS reserved"
        )
    finally:
        await connection.close()
    assert row is not None
    return int(row["max_connections"]), int(row["reserved"])


def _connections_line(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``authdb doctor ARGS``'s exit code and its ``connections`` line."""
    result = invoke_cli(["doctor", *args], env=env)
    lines = [line for line in result.stdout.splitlines() if line[7:].startswith("connections:")]
    assert len(lines) == 1, result.stdout + result.stderr
    return result.returncode, lines[0]


# --- the verdict, from the numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("demand", "limits", "status", "message"),
    [
        pytest.param(
            Demand(1, 4, 10),
            Limits(100, 3, 0),
            "ok",
            "4 workers x 10 connections = 40 of 97 available (max_connections 100, 3 reserved)",
            id="fits",
        ),
        pytest.param(
            Demand(2, 1, 10),
            Limits(100, 3, 5),
            "ok",
            "2 hosts x 1 worker x 10 connections = 20 of 97 available "
            "(max_connections 100, 3 reserved); 5 open now to other databases",
            id="hosts-and-others",
        ),
        pytest.param(
            Demand(1, 8, 10),
            Limits(100, 0, 0),
            "ok",
            "8 workers x 10 connections = 80 of 100 available (max_connections 100, 0 reserved)",
            id="at-80-percent",
        ),
        pytest.param(
            Demand(1, 1, 81),
            Limits(100, 0, 0),
            "warn",
            "1 worker x 81 connections = 81 of 100 available (max_connections 100, 0 reserved): "
            f"81% of them, little left for migrations, psql and backups; {ADVICE}",
            id="past-80-percent",
        ),
        pytest.param(
            Demand(1, 5, 10),
            Limits(100, 3, 50),
            "warn",
            "5 workers x 10 connections = 50 of 97 available (max_connections 100, 3 reserved), "
            f"but 50 are open now to other databases, leaving 47; {ADVICE}",
            id="others-leave-too-few",
        ),
        pytest.param(Demand(1, 1, 97), Limits(100, 3, 0), "warn", None, id="exactly-all-available"),
        pytest.param(
            Demand(1, 7, 14),
            Limits(100, 3, 0),
            "error",
            "7 workers x 14 connections = 98, more than the 97 available "
            f"(max_connections 100, 3 reserved): {ADVICE}",
            id="one-too-many",
        ),
        pytest.param(
            Demand(1, 1, 2),
            Limits(3, 3, 0),
            "error",
            "1 worker x 2 connections = 2, more than the 0 available "
            f"(max_connections 3, 3 reserved): {ADVICE}",
            id="nothing-available",
        ),
    ],
)
def test_the_verdict_names_the_numbers(
    demand: Demand, limits: Limits, status: str, message: str | None
) -> None:
    verdict = judge(demand, limits)
    assert verdict.status == status
    if message is not None:
        assert verdict.message == message


# --- against the real server ---------------------------------------------------------------------


def test_the_default_run_on_each_database(database_url: str) -> None:
    env = migrated_env(database_url, KEY)
    code, line = _connections_line(env)
    assert code == 0, line
    if database_url.startswith("sqlite"):
        assert line == "ok     connections: SQLite has no connection limit to plan for"
        return
    max_connections, reserved = asyncio.run(_server_limits())
    assert line.startswith(
        f"ok     connections: 1 worker x 10 connections = 10 of {max_connections - reserved} "
        f"available (max_connections {max_connections}, {reserved} reserved)"
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_ok_warn_and_error_against_the_servers_max_connections(database_url: str) -> None:
    max_connections, reserved = asyncio.run(_server_limits())
    available = max_connections - reserved
    assert available > 5, "the thresholds below need a few connections to work with"
    limits = f"(max_connections {max_connections}, {reserved} reserved)"
    # Two connections a process, so that the worker count alone moves the total.
    env = {**migrated_env(database_url, KEY), "AUTHDB_DATABASE_POOL_SIZE": "2"}

    code, line = _connections_line(env, "--hosts", "2")
    assert code == 0
    assert line.startswith(
        f"ok     connections: 2 hosts x 1 worker x 2 connections = 4 of {available} available "
        f"{limits}"
    )

    # All but at most one of the available connections: past 80 %, a warning (exit 0).
    workers = available // 2
    code, line = _connections_line(env, "--workers", str(workers))
    assert code == 0
    assert line.startswith(
        f"warn   connections: {workers} workers x 2 connections = {2 * workers} of {available} "
        f"available {limits}: "
    )
    assert line.endswith(ADVICE)

    # One process more than fits: an error, exit 1; and the same by hosts.
    workers += 1
    code, line = _connections_line(env, "--workers", str(workers))
    assert code == 1
    assert line == (
        f"error  connections: {workers} workers x 2 connections = {2 * workers}, more than the "
        f"{available} available {limits}: {ADVICE}"
    )
    code, line = _connections_line(env, "--hosts", str(available), "--workers", "1")
    assert code == 1
    assert line.startswith(
        f"error  connections: {available} hosts x 1 worker x 2 connections = {2 * available}, "
    )

    # The pool size alone can be too much for one process.
    if available < 1000:  # AUTHDB_DATABASE_POOL_SIZE's own limit
        too_big = {**env, "AUTHDB_DATABASE_POOL_SIZE": str(available + 1)}
        code, line = _connections_line(too_big)
        assert code == 1
        assert line.startswith(f"error  connections: 1 worker x {available + 1} connections")


async def test_an_unreachable_database_is_not_checked() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test",
    )
    results = await examine(settings, workers=4)
    [connections] = [result for result in results if result.name == "connections"]
    assert (connections.status, connections.message) == (
        "skip",
        "not checked: the database cannot be read",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "error: --workers must be at least 1, not 0"),
        (["--hosts", "0"], "error: --hosts must be at least 1, not 0"),
        (["--workers", "2", "--hosts", "-3"], "error: --hosts must be at least 1, not -3"),
    ],
)
def test_bad_counts_are_one_line(args: list[str], message: str) -> None:
    # Refused before any setting is read or any database opened.
    result = invoke_cli(["doctor", *args], env={"AUTHDB_DATABASE_URL": "postgresql://nowhere/x"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == message + "\n"


def test_a_count_that_is_no_number_is_a_usage_error() -> None:
    result = invoke_cli(["doctor", "--workers", "many"], env={})
    assert result.returncode == 2
    assert "'--workers'" in result.stderr
    assert "Traceback" not in result.stderr


# --- behind PgBouncer ----------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_behind_pgbouncer_the_budget_is_pgbouncers(database_url: str, pgbouncer: int) -> None:
    max_connections, _ = asyncio.run(_server_limits())
    via_pgbouncer = make_url(database_url).set(port=pgbouncer).render_as_string(False)
    env = {
        "AUTHDB_DATABASE_URL": via_pgbouncer,
        "AUTHDB_DATABASE_PGBOUNCER": "true",
        "AUTHDB_SECRET_KEY": KEY,
    }
    migrated = invoke_cli(["migrate"], env=env)
    assert migrated.returncode == 0, migrated.stderr
    # Far more client connections than PostgreSQL allows: PgBouncer's to multiplex.
    workers = max_connections
    code, line = _connections_line(env, "--workers", str(workers))
    assert code == 0, line
    assert line == (
        f"ok     connections: {workers} workers x 10 connections = {10 * workers} client "
        "connections to PgBouncer (AUTHDB_DATABASE_PGBOUNCER): keep its max_client_conn above "
        "that, and its default_pool_size and max_db_connections within PostgreSQL's "
        f"max_connections ({max_connections})"
    )
