"""authdb.db.pg_transaction: BEGIN retried once on a cut connection, every connection given
back exactly once and marked unsound when it cannot be trusted again (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from authdb.db.pg_transaction import retried_transaction, worth_retrying
from tests.conftest import PG_ADMIN_DSN, pg_database


class Connections:
    """Hands out real connections, some cut by the server before they are used, and records
    what came back."""

    def __init__(self, dsn: str, admin: Any, cut_first: int = 0) -> None:
        self.dsn = dsn
        self.admin = admin
        self.cut_first = cut_first
        self.handed: list[Any] = []
        self.returned: list[tuple[Any, bool]] = []

    async def acquire(self) -> Any:
        connection = await asyncpg.connect(self.dsn)
        if len(self.handed) < self.cut_first:
            pid = connection.get_server_pid()
            await self.admin.execute("SELECT pg_terminate_backend($1)", pid)
            await _until_gone(self.admin, pid)
        self.handed.append(connection)
        return connection

    async def give_back(self, connection: Any, sound: bool) -> None:
        self.returned.append((connection, sound))

    async def close(self) -> None:
        for connection in self.handed:
            connection.terminate()


async def _until_gone(admin: Any, pid: int) -> None:
    for _ in range(500):
        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} still there")


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, Any]]:
    async with pg_database() as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        setup = await asyncpg.connect(dsn)
        await setup.execute(
            "CREATE TABLE t (x INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED);"
            "INSERT INTO t VALUES (1)"
        )
        await setup.close()
        try:
            yield dsn, admin
        finally:
            await admin.close()


async def _rows(dsn: str) -> list[int]:
    reader = await asyncpg.connect(dsn)
    try:
        return [row["x"] for row in await reader.fetch("SELECT x FROM t ORDER BY x")]
    finally:
        await reader.close()


async def test_a_cut_connection_is_given_back_unsound_and_begin_retried_once(
    pg: tuple[str, Any],
) -> None:
    dsn, admin = pg
    pool = Connections(dsn, admin, cut_first=1)
    runs = 0
    try:
        async with retried_transaction(pool.acquire, pool.give_back) as connection:
            runs += 1
            await connection.execute("INSERT INTO t VALUES (2)")
    finally:
        await pool.close()
    assert runs == 1
    assert [sound for _, sound in pool.returned] == [False, True]
    assert [c for c, _ in pool.returned] == pool.handed
    assert await _rows(dsn) == [1, 2]


async def test_a_second_cut_connection_is_not_retried_again(pg: tuple[str, Any]) -> None:
    dsn, admin = pg
    pool = Connections(dsn, admin, cut_first=2)
    try:
        # asyncpg's error for a cut connection varies with when it saw the socket close.
        with pytest.raises(Exception) as cut:
            async with retried_transaction(pool.acquire, pool.give_back):
                raise AssertionError("the block ran on a cut connection")
    finally:
        await pool.close()
    assert isinstance(cut.value, Exception) and worth_retrying(cut.value)
    assert [sound for _, sound in pool.returned] == [False, False]
    assert len(pool.handed) == 2


async def test_a_block_that_raises_is_rolled_back_and_its_connection_kept(
    pg: tuple[str, Any],
) -> None:
    dsn, admin = pg
    pool = Connections(dsn, admin)
    try:
        with pytest.raises(LookupError):
            async with retried_transaction(pool.acquire, pool.give_back) as connection:
                await connection.execute("INSERT INTO t VALUES (3)")
                raise LookupError("the caller's own error")
        ((connection, sound),) = pool.returned
        assert sound and not connection.is_in_transaction()
    finally:
        await pool.close()
    assert await _rows(dsn) == [1]


async def test_a_failed_commit_gives_the_connection_back_unsound(pg: tuple[str, Any]) -> None:
    dsn, admin = pg
    pool = Connections(dsn, admin)
    try:
        # The deferred unique constraint is checked only at COMMIT.
        with pytest.raises(asyncpg.UniqueViolationError):
            async with retried_transaction(pool.acquire, pool.give_back) as connection:
                await connection.execute("INSERT INTO t VALUES (1)")
    finally:
        await pool.close()
    assert [sound for _, sound in pool.returned] == [False]
    assert await _rows(dsn) == [1]


async def test_an_error_at_begin_that_is_not_a_cut_is_not_retried(pg: tuple[str, Any]) -> None:
    dsn, admin = pg
    pool = Connections(dsn, admin)

    async def acquire_inside_a_transaction() -> Any:
        connection = await pool.acquire()
        await connection.execute("BEGIN")  # asyncpg refuses to nest its own transaction
        return connection

    try:
        with pytest.raises(asyncpg.InterfaceError):
            async with retried_transaction(acquire_inside_a_transaction, pool.give_back):
                raise AssertionError("the block ran")
    finally:
        await pool.close()
    assert [sound for _, sound in pool.returned] == [False]
