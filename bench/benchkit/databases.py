"""Databases for the benchmark: SQLite files in the work directory and throwaway PostgreSQL
databases (``authdb_bench_<random>``, dropped at the end); seeding authdb's ``users`` table by
SQL; and the CPU of the PostgreSQL backends that serve one database, from ``/proc``.

Seeding copies one real user's row (made by ``authdb createuser``, so its argon2 hash is valid)
``count`` times under new names: a benchmark may fill a table this way, the product never needs
to. Every seeded user has the same password as the original.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit.procs import BenchError, cpu_seconds

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
SEED_PREFIX = "user"


def seed_name(number: int) -> str:
    """The username of seeded user ``number`` (1-based): ``user0000042``."""
    return f"{SEED_PREFIX}{number:07d}"


def _pg(sql_or_fn: Any) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> Any:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            return await sql_or_fn(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@dataclass
class Postgres:
    """Throwaway databases on the local PostgreSQL server (trust authentication)."""

    created: list[str] = field(default_factory=list)

    def create(self) -> str:
        """A new empty database; its SQLAlchemy URL (asyncpg driver)."""
        name = f"authdb_bench_{secrets.token_hex(6)}"
        _pg(lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return PG_URL.format(name=name)

    def drop_all(self) -> None:
        while self.created:
            name = self.created.pop()
            _pg(lambda conn, n=name: conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))

    @staticmethod
    def version() -> str:
        value: str = _pg(lambda conn: conn.fetchval("SHOW server_version"))
        return value.split()[0]

    @staticmethod
    def available() -> bool:
        try:
            _pg(lambda conn: conn.fetchval("SELECT 1"))
        except (OSError, ImportError) as exc:
            print(f"PostgreSQL not available ({exc}); its rows are skipped", file=sys.stderr)
            return False
        return True


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def dsn(url: str) -> str:
    """asyncpg's DSN for a ``postgresql+asyncpg://`` URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


def _copy_columns(columns: list[str], name: str) -> str:
    """The SELECT list that copies user ``u`` under the username SQL expression ``name``."""
    special = {
        "username": name,
        "username_key": name,
        "email": f"{name} || '@example.com'",
        "email_key": f"{name} || '@example.com'",
    }
    return ", ".join(special.get(c, f"u.{c}") for c in columns)


def seed_users(url: str, original: str, count: int) -> None:
    """Insert ``count`` copies of user ``original`` (a username_key) named ``seed_name(1..)``."""
    if count <= 0:
        return
    if url.startswith("sqlite"):
        _seed_sqlite(sqlite_path(url), original, count)
    else:
        _seed_postgres(url, original, count)


def _seed_sqlite(path: Path, original: str, count: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(users)") if row[1] != "id"]
        name = f"'{SEED_PREFIX}' || substr('000000' || n, -7, 7)"
        # Column names come from the schema itself, values are parameters.
        sql = (
            f"INSERT INTO users ({', '.join(columns)}) "  # noqa: S608
            f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
            f"SELECT {_copy_columns(columns, name)} FROM g, users u WHERE u.username_key = ?"
        )
        conn.execute("BEGIN")
        conn.execute(sql, (count, original))
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


def _seed_postgres(url: str, original: str, count: int) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn(url), timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'users' AND table_schema = current_schema() "
                "AND column_name <> 'id' ORDER BY ordinal_position"
            )
            columns = [row["column_name"] for row in rows]
            name = f"'{SEED_PREFIX}' || lpad(g::text, 7, '0')"
            # Column names come from the schema itself, values are parameters.
            await conn.execute(
                f"INSERT INTO users ({', '.join(columns)}) "  # noqa: S608
                f"SELECT {_copy_columns(columns, name)} "
                f"FROM generate_series(1, $1::int) g, users u WHERE u.username_key = $2",
                count,
                original,
            )
            await conn.execute("VACUUM ANALYZE users")
        finally:
            await conn.close()

    asyncio.run(run())


def count_users(url: str) -> int:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url))
        try:
            return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
        finally:
            conn.close()
    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(dsn(url), timeout=10)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM users"))
        finally:
            await conn.close()

    return int(asyncio.run(run()))


class BackendCPU:
    """CPU seconds of the PostgreSQL backends connected to one database (from ``/proc``).

    ``sample`` maps each backend's PID to its CPU so far; ``used`` subtracts two samples,
    counting a backend that appeared in between from zero. Backends that ended in between
    are missed: the servers under test keep pooled connections, so that is rare.
    """

    def __init__(self, url: str) -> None:
        self.name = database_name(url)

    def sample(self) -> dict[int, float]:
        async def pids(conn: Any) -> list[int]:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.name,
            )
            return [int(row["pid"]) for row in rows]

        try:
            found: list[int] = _pg(pids)
        except OSError as exc:
            raise BenchError(f"cannot read pg_stat_activity: {exc}") from exc
        return {pid: cpu_seconds(pid) for pid in found}

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())
