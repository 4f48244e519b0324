"""Per-address and per-email rate limits (``limits``), in memory or shared through Redis."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from authdb.errors import TooManyRequests
from authdb.settings import Settings


class RateLimits:
    """The named budgets of the spec, checked with ``check`` and spent with ``hit``."""

    def __init__(self, settings: Settings) -> None:
        uri = "async+memory://"
        if settings.redis_url:
            uri = "async+" + settings.redis_url
        storage = storage_from_string(uri, key_prefix="authdb")
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
        if not await self._limiter.test(item, budget, key):
            raise TooManyRequests(await self._retry_after(item, budget, key))

    async def hit(self, budget: str, key: str) -> None:
        """Spend one unit of ``budget``; raise TooManyRequests when none was left."""
        item = self._items[budget]
        if not await self._limiter.hit(item, budget, key):
            raise TooManyRequests(await self._retry_after(item, budget, key))

    async def _retry_after(self, item: RateLimitItem, *identifiers: str) -> int:
        stats = await self._limiter.get_window_stats(item, *identifiers)
        return max(1, math.ceil(stats.reset_time - time.time()))
