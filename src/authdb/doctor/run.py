"""The checks in the order ``authdb doctor`` shows them, and running them all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from authdb.doctor.configuration import (
    check_cookies,
    check_email_templates,
    check_metrics,
    check_passkeys,
    check_public_url,
    check_secret_key,
    check_trusted_proxies,
)
from authdb.doctor.connections import check_connections
from authdb.doctor.database import check_clock, check_database, check_schema, open_database
from authdb.doctor.findings import TIMEOUT_SECONDS, Deployment, Result, Verdict, error, reason
from authdb.doctor.network import check_redis, check_smtp
from authdb.doctor.providers import provider_check
from authdb.settings import Settings
from authdb.settings_env import url_secrets

Check = Callable[[Deployment], Awaitable[Verdict]]

CHECKS: tuple[tuple[str, Check], ...] = (
    ("secret key", check_secret_key),
    ("database", check_database),
    ("schema", check_schema),
    ("clock", check_clock),
    ("connections", check_connections),
    ("redis", check_redis),
    ("smtp", check_smtp),
    ("templates", check_email_templates),
    ("public URL", check_public_url),
    ("cookies", check_cookies),
    ("trusted proxies", check_trusted_proxies),
    ("passkeys", check_passkeys),
    ("metrics", check_metrics),
)


def checks(settings: Settings) -> tuple[tuple[str, Check], ...]:
    """CHECKS, then one ``oauth <name>`` check per sign-in provider of ``settings``."""
    return CHECKS + tuple((f"oauth {name}", provider_check(name)) for name in settings.oauth)


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def examine(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = _utcnow,
    hosts: int = 1,
    workers: int = 1,
) -> list[Result]:
    """Run every check on the deployment ``settings`` describe, run by ``workers`` authdb
    processes on each of ``hosts`` (both at least 1); one Result each, in order.

    Nothing is written: the database is opened read-only (a missing SQLite file stays
    missing). A check that fails unexpectedly or hangs is an error of its own, not a crash.
    """
    hidden = _secrets(settings)
    results = []
    async with open_database(settings) as database:
        deployment = Deployment(settings, database, clock, hosts=hosts, workers=workers)
        for name, check in checks(settings):
            verdict = await _bounded(check, deployment)
            results.append(Result(verdict.status, name, _redact(verdict.message, hidden)))
    return results


async def _bounded(check: Check, deployment: Deployment) -> Verdict:
    try:
        async with asyncio.timeout(2 * TIMEOUT_SECONDS):
            return await check(deployment)
    except TimeoutError:
        return error(f"no answer within {2 * TIMEOUT_SECONDS:g} s")
    except Exception as exc:
        why = reason(exc)
        name = type(exc).__name__
        return error(why if why == name else f"{name}: {why}")


def _secrets(settings: Settings) -> list[str]:
    """Every secret the settings hold, to be kept out of messages whatever a library says."""
    found = [settings.secret_key, settings.smtp_password, *settings.secret_key_fallbacks]
    found += [provider.client_secret for provider in settings.oauth.values()]
    values = [secret.get_secret_value() for secret in found if secret is not None]
    for url in (settings.database_url, settings.redis_url):
        values += url_secrets(url)
    return [value for value in values if value]


def _redact(message: str, hidden: list[str]) -> str:
    for value in hidden:
        message = message.replace(value, "***")
    return message
