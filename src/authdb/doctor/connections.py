"""Whether PostgreSQL has room for the connections of every authdb process.

Each process holds at most ``AUTHDB_DATABASE_POOL_SIZE`` connections, all of them together
(authdb.db.engine.PoolBudget), and ``hosts`` x ``workers`` processes may hold them all at once.
PostgreSQL lets ordinary roles have ``max_connections`` less the slots it keeps back:
``superuser_reserved_connections`` and, from PostgreSQL 16, ``reserved_connections``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.doctor.findings import Deployment, Verdict, error, ok, skip, warn

# Past this share of the available connections the doctor warns: migrations, psql, backups and
# monitoring need some too, and PostgreSQL refuses the one past the limit.
WARN_PERCENT = 80
_NOT_CHECKED = "not checked: the database cannot be read"
_WHAT_TO_DO = (
    "lower AUTHDB_DATABASE_POOL_SIZE, run fewer workers, raise max_connections, "
    "or put PgBouncer in front (AUTHDB_DATABASE_PGBOUNCER=true)"
)

# ``reserved_connections`` is unknown before PostgreSQL 16: current_setting(..., true) is NULL.
# Only client connections to other databases count as others: those to this database may be
# authdb's own processes, already counted once in the demand. A session of another role shows
# NULL as its backend_type to an ordinary role, so NULL counts as a client.
_LIMITS = text(
    "SELECT current_setting('max_connections')::int, "
    "current_setting('superuser_reserved_connections')::int, "
    "coalesce(current_setting('reserved_connections', true), '0')::int, "
    "(SELECT count(*) FROM pg_stat_activity WHERE datid IS NOT NULL "
    "AND datname <> current_database() "
    "AND coalesce(backend_type, 'client backend') = 'client backend')"
)


@dataclass(frozen=True, slots=True)
class Demand:
    """The most connections authdb may hold at once: ``hosts`` x ``workers`` processes of
    ``pool_size`` connections each (all counts at least 1)."""

    hosts: int
    workers: int
    pool_size: int

    @property
    def connections(self) -> int:
        return self.hosts * self.workers * self.pool_size

    def __str__(self) -> str:
        """``4 workers x 10 connections = 40`` (``2 hosts x 4 workers x ...`` on several)."""
        hosts = f"{_count(self.hosts, 'host')} x " if self.hosts > 1 else ""
        workers = _count(self.workers, "worker")
        return f"{hosts}{workers} x {_count(self.pool_size, 'connection')} = {self.connections}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What PostgreSQL allows: ``max_connections``, the slots ``reserved`` for superusers and
    roles with pg_use_reserved_connections, and client connections open now to other databases
    (``elsewhere``)."""

    max_connections: int
    reserved: int
    elsewhere: int

    @property
    def available(self) -> int:
        """The connections ordinary roles such as authdb's may open."""
        return self.max_connections - self.reserved

    def __str__(self) -> str:
        return f"max_connections {self.max_connections}, {self.reserved} reserved"


def judge(demand: Demand, limits: Limits) -> Verdict:
    """Error past the available connections; warn past WARN_PERCENT of them, or when the
    connections open now to other databases leave too few; ok otherwise. Numbers named."""
    needed, available = demand.connections, limits.available
    if needed > available:
        return error(
            f"{demand}, more than the {max(available, 0)} available ({limits}): {_WHAT_TO_DO}"
        )
    shown = f"{demand} of {available} available ({limits})"
    if needed * 100 > available * WARN_PERCENT:
        percent = needed * 100 // available
        return warn(
            f"{shown}: {percent}% of them, little left for migrations, psql and backups; "
            f"{_WHAT_TO_DO}"
        )
    free = available - limits.elsewhere
    if needed > free:
        return warn(
            f"{shown}, but {limits.elsewhere} are open now to other databases, "
            f"leaving {free}; {_WHAT_TO_DO}"
        )
    if limits.elsewhere:
        return ok(f"{shown}; {limits.elsewhere} open now to other databases")
    return ok(shown)


async def check_connections(deployment: Deployment) -> Verdict:
    """``hosts`` x ``workers`` x ``AUTHDB_DATABASE_POOL_SIZE`` against PostgreSQL's limit (see
    judge). SQLite has none; behind PgBouncer the limit is PgBouncer's to keep."""
    settings, database = deployment.settings, deployment.database
    if database.sqlite:
        return ok("SQLite has no connection limit to plan for")
    if database.engine is None:
        return skip(_NOT_CHECKED)
    demand = Demand(deployment.hosts, deployment.workers, settings.database_pool_size)
    if settings.database_pgbouncer:
        return await _behind_pgbouncer(database.engine, demand)
    async with database.engine.connect() as connection:
        row = (await connection.execute(_LIMITS)).one()
    max_connections, superuser_reserved, reserved, elsewhere = (int(value) for value in row)
    return judge(demand, Limits(max_connections, superuser_reserved + reserved, elsewhere))


async def _behind_pgbouncer(engine: AsyncEngine, demand: Demand) -> Verdict:
    """An ok naming the client connections PgBouncer must accept; PostgreSQL's limit behind it
    is shown when PgBouncer passes the question on (it need not)."""
    server = ""
    with contextlib.suppress(Exception):  # only shown: PgBouncer need not pass this on
        async with engine.connect() as connection:
            limit = await connection.scalar(text("SELECT current_setting('max_connections')"))
        server = f" ({limit})"
    return ok(
        f"{demand} client connections to PgBouncer (AUTHDB_DATABASE_PGBOUNCER): keep its "
        f"max_client_conn above that, and its default_pool_size and max_db_connections "
        f"within PostgreSQL's max_connections{server}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
