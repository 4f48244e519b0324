"""Per-address and per-email rate limits (``limits``), in memory or shared through Redis.

The budgets are moving windows: "20/minute" means at most 20 in any 60 seconds, so there
is no window boundary at which an attacker gets twice the budget in a burst.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from authdb.errors import TooManyRequests
from authdb.settings import Settings

log = logging.getLogger("authdb")


def storage_uri(redis_url: str | None) -> str:
    """The ``limits`` storage for a Redis URL: ``redis://h:p/n`` becomes ``async+redis://...``.

    Without Redis the counters live in this process's memory, which is right for one
    process and wrong for several (each would grant the whole budget).
    """
    if not redis_url:
        return "async+memory://"
    return redis_url if redis_url.startswith("async+") else "async+" + redis_url


class RateLimits:
    """The named budgets of the spec, checked with ``check`` and spent with ``hit``.

    Budgets: ``login_failures`` and ``register`` (per client address), ``email`` (per email
    address) and ``email_address`` (verify/forgot requests per client address).
    """

    def __init__(self, settings: Settings) -> None:
        storage = storage_from_string(
            storage_uri(settings.redis_url), key_prefix=settings.redis_key_prefix
        )
        assert isinstance(storage, Storage)  # the async+ scheme gives the asyncio flavour
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._items: dict[str, RateLimitItem] = {
            "login_failures": parse(settings.rate_limit_login_failures),
            "register": parse(settings.rate_limit_register),
            "email": parse(settings.rate_limit_email_requests),
            "email_address": parse(settings.rate_limit_email_requests_per_address),
        }

    async def check(self, budget: str, key: str) -> None:
        """Raise TooManyRequests when ``key`` has used up ``budget``, without spending it."""
        item = self._items[budget]
        if not await self._ask(self._limiter.test, item, budget, key):
            raise TooManyRequests(await self._retry_after(item, budget, key))

    async def hit(self, budget: str, key: str) -> None:
        """Spend one unit of ``budget``; raise TooManyRequests when none was left."""
        item = self._items[budget]
        if not await self._ask(self._limiter.hit, item, budget, key):
            raise TooManyRequests(await self._retry_after(item, budget, key))

    async def _ask(
        self,
        question: Callable[..., Awaitable[bool]],
        item: RateLimitItem,
        *identifiers: str,
    ) -> bool:
        # An unreachable store fails open: the database-backed account lockout still holds,
        # and an outage of Redis must not become an outage of every login.
        try:
            return await question(item, *identifiers)
        except Exception as exc:
            log.error("rate limit store unavailable, not limiting: %s", type(exc).__name__)
            return True

    async def _retry_after(self, item: RateLimitItem, *identifiers: str) -> int:
        # The window's oldest entry leaves at reset_time; one unit is free again then.
        try:
            stats = await self._limiter.get_window_stats(item, *identifiers)
        except Exception:
            return int(item.get_expiry())
        return max(1, math.ceil(stats.reset_time - time.time()))
