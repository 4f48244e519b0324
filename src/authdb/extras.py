"""Optional dependencies (the ``postgres``, ``redis``, ``metrics`` and ``oauth`` extras),
checked up front.

A setting that needs an extra fails when authdb starts (``Auth()``, or any CLI command) with a
message naming the ``pip install`` to run, instead of an ``ImportError`` from deep inside a
driver at the first request.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from authdb.settings import Settings


class MissingExtra(RuntimeError):
    """A feature in use needs an optional dependency that is not installed.

    The message is one line naming the extra: ``PostgreSQL needs asyncpg: pip install
    'authdb[postgres]'``.
    """


def require(module: str, *, feature: str, extra: str) -> None:
    """Import ``module`` or raise MissingExtra saying ``feature`` needs ``authdb[extra]``."""
    try:
        importlib.import_module(module)
    except ImportError:
        distribution = module.replace("_", "-")
        raise MissingExtra(
            f"{feature} needs {distribution}: pip install 'authdb[{extra}]'"
        ) from None


def require_postgres() -> None:
    """asyncpg, the PostgreSQL driver (``authdb[postgres]``)."""
    require("asyncpg", feature="PostgreSQL", extra="postgres")


def require_redis() -> None:
    """redis-py, the client of the shared rate limits (``authdb[redis]``)."""
    require("redis", feature="AUTHDB_REDIS_URL", extra="redis")


def require_oauth() -> None:
    """Authlib and httpx, the sign-in providers' client (``authdb[oauth]``)."""
    for module in ("authlib", "httpx"):
        require(module, feature="Sign-in with providers (AUTHDB_OAUTH_PROVIDERS)", extra="oauth")


def check(settings: Settings) -> None:
    """Raise MissingExtra for the first extra that ``settings`` need and that is missing."""
    # Settings admit only SQLite and PostgreSQL URLs.
    if not settings.database_url.startswith("sqlite"):
        require_postgres()
    if settings.redis_url:
        require_redis()
    if settings.metrics_enabled:
        require("prometheus_client", feature="Metrics (AUTHDB_METRICS_ENABLED)", extra="metrics")
    if settings.oauth_providers:
        require_oauth()
