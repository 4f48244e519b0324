"""Per-address and per-email rate limits (``limits``), in memory or shared through Redis.

The budgets are moving windows: "20/minute" means at most 20 in any 60 seconds, so there
is no window boundary at which an attacker gets twice the budget in a burst.

A Redis that fails or does not answer within ``AUTHDB_REDIS_TIMEOUT_SECONDS`` fails open (the
database-backed account lockout still holds), and a circuit breaker then leaves it alone for
``BREAKER_SECONDS``, so that an outage costs one request the timeout, not every request.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from authdb import metrics
from authdb.errors import TooManyRequests
from authdb.extras import require_redis
from authdb.services.core import ClientInfo
from authdb.settings import Settings

log = logging.getLogger("authdb")
_T = TypeVar("_T")


def storage_uri(redis_url: str | None) -> str:
    """The ``limits`` storage for a Redis URL: ``redis://h:p/n`` becomes ``async+redis://...``.

    Without Redis the counters live in this process's memory, which is right for one
    process and wrong for several (each would grant the whole budget).
    """
    if not redis_url:
        return "async+memory://"
    return redis_url if redis_url.startswith("async+") else "async+" + redis_url


# After a failure the store is skipped (limits fail open at once) for this long; then one
# request tries it again. Short, so limits are back soon after Redis is.
BREAKER_SECONDS = 5.0


def _redis_options(timeout: float) -> dict[str, Any]:
    """Client options bounding every Redis call, connecting included, by ``timeout``."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return {
        # redis-py rather than limits' default coredis: the well-known client, with socket
        # timeouts that close a connection stuck on a server that stopped answering.
        "implementation": "redispy",
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # Its default retries would only repeat the wait; the breaker decides when to retry.
        "retry": Retry(NoBackoff(), 0),
    }


class Breaker:
    """A circuit breaker: after a failure the store is left alone for ``period`` seconds.

    Then one caller may try it again (the others keep skipping it meanwhile); a success
    closes the breaker, another failure opens it for a new period.
    """

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._open_until: float | None = None  # None: closed, the store is believed to work
        self.openings = 0

    @property
    def is_open(self) -> bool:
        """Whether the store is currently treated as down."""
        return self._open_until is not None

    def allows(self) -> bool:
        """Whether to ask the store now; claims the retry when a period has just ended."""
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        self._open_until = now + self.period
        return True

    def succeeded(self) -> None:
        if self._open_until is not None:
            log.warning("rate limit store answers again; limiting resumes")
        self._open_until = None

    def failed(self, exc: BaseException) -> None:
        if self._open_until is None:
            self.openings += 1
            log.error(
                "rate limit store unavailable (%s), not limiting; next try in %.0f s",
                type(exc).__name__,
                self.period,
            )
        self._open_until = self._clock() + self.period


# Each budget and the setting that sizes it.
_BUDGET_SETTINGS = {
    "login_failures": "rate_limit_login_failures",
    "register": "rate_limit_register",
    "email": "rate_limit_email_requests",
    "email_address": "rate_limit_email_requests_per_address",
    # New-device alerts per account: a stolen password must not turn into a mail flood.
    "new_device_alert": "rate_limit_email_requests",
}


def _budget(settings: Settings, name: str) -> RateLimitItem:
    """The parsed budget; ValueError naming the variable (``Settings`` checks it already, but
    a value assigned after validation reaches here unchecked)."""
    value = getattr(settings, name)
    try:
        return parse(value)
    except ValueError:
        raise ValueError(
            f"AUTHDB_{name.upper()}: {value!r} is not a rate limit like '20/minute'"
        ) from None


class RateLimits:
    """The named budgets of the spec, checked with ``check`` and spent with ``hit``.

    Budgets: ``login_failures`` and ``register`` (per client address), ``email`` (per email
    address), ``email_address`` (verify/forgot requests per client address) and
    ``new_device_alert`` (alert emails per account, sized as ``email``).
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        if settings.redis_url:
            require_redis()  # MissingExtra naming authdb[redis], not limits' own ImportError
        uri = storage_uri(settings.redis_url)
        options = _redis_options(settings.redis_timeout_seconds) if settings.redis_url else {}
        storage = storage_from_string(uri, key_prefix=settings.redis_key_prefix, **options)
        assert isinstance(storage, Storage)  # the async+ scheme gives the asyncio flavour
        self.storage = storage
        self.timeout = settings.redis_timeout_seconds
        self.breaker = Breaker(BREAKER_SECONDS, clock)
        self._limiter = MovingWindowRateLimiter(self.storage)
        # Attempts in flight per (budget, key), and an event set when one ends: see ``attempt``.
        self._in_flight: dict[tuple[str, str], int] = {}
        self._attempt_ended = asyncio.Event()
        self._items: dict[str, RateLimitItem] = {
            budget: _budget(settings, name) for budget, name in _BUDGET_SETTINGS.items()
        }

    async def check(self, budget: str, key: str) -> None:
        """Raise TooManyRequests when ``key`` has used up ``budget``, without spending it."""
        item = self._items[budget]
        if not await self._ask(self._limiter.test, item, budget, key):
            metrics.rate_limited(budget)
            raise TooManyRequests(await self._retry_after(item, budget, key))

    async def hit(self, budget: str, key: str) -> None:
        """Spend one unit of ``budget``; raise TooManyRequests when none was left."""
        item = self._items[budget]
        if not await self._ask(self._limiter.hit, item, budget, key):
            metrics.rate_limited(budget)
            raise TooManyRequests(await self._retry_after(item, budget, key))

    @asynccontextmanager
    async def attempt(self, budget: str, key: str) -> AsyncIterator[None]:
        """Hold a place in ``budget`` for an attempt whose outcome is not known yet.

        This process's attempts still in flight count as if each had failed, so a burst of
        concurrent guesses is cut at the budget instead of being let through whole because
        none of them has failed yet. An attempt that finds every remaining place held waits
        for one to be given back: a success spends nothing (the caller spends a failure with
        ``hit``), so concurrent right-password logins all go through. Raises TooManyRequests
        when the spent failures alone fill the budget.
        """
        slot = (budget, key)
        item = self._items[budget]
        while True:
            ended = self._attempt_ended  # set when any attempt ends from now on
            # Claimed before the first await, so racing attempts count each other.
            in_flight = self._in_flight.get(slot, 0) + 1
            self._in_flight[slot] = in_flight
            test = functools.partial(self._limiter.test, cost=in_flight)
            if await self._ask(test, item, budget, key):
                break
            self._unclaim(slot)
            if in_flight == 1 or not await self._ask(self._limiter.test, item, budget, key):
                metrics.rate_limited(budget)
                raise TooManyRequests(await self._retry_after(item, budget, key))
            await ended.wait()
        try:
            yield
        finally:
            self._unclaim(slot)
            self._attempt_ended.set()
            self._attempt_ended = asyncio.Event()

    def _unclaim(self, slot: tuple[str, str]) -> None:
        left = self._in_flight[slot] - 1
        if left:
            self._in_flight[slot] = left
        else:
            del self._in_flight[slot]

    async def _ask(
        self,
        question: Callable[..., Awaitable[bool]],
        item: RateLimitItem,
        *identifiers: str,
    ) -> bool:
        # An unreachable store fails open: the database-backed account lockout still holds,
        # and an outage of Redis must not become an outage of every login.
        answer = await self._bounded(lambda: question(item, *identifiers))
        return True if answer is None else answer

    async def _retry_after(self, item: RateLimitItem, *identifiers: str) -> int:
        # The window's oldest entry leaves at reset_time; one unit is free again then.
        stats = await self._bounded(lambda: self._limiter.get_window_stats(item, *identifiers))
        if stats is None:
            return int(item.get_expiry())
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def _bounded(self, call: Callable[[], Awaitable[_T]]) -> _T | None:
        """The store's answer within the timeout, or None when it is (or was just) down."""
        if not self.breaker.allows():
            return None
        try:
            async with asyncio.timeout(self.timeout):
                answer = await call()
        except Exception as exc:  # TimeoutError, connection errors, anything the store raises
            self.breaker.failed(exc)
            return None
        self.breaker.succeeded()
        return answer


def client_key(client: ClientInfo, settings: Settings) -> str:
    """The rate-limit key of a client: its IPv4 address, or its IPv6 network.

    One IPv6 subscriber usually holds a whole /64 (``AUTHDB_RATE_LIMIT_IPV6_PREFIX``) and could
    otherwise take a fresh budget from each of its addresses. Every budget keyed by a client
    address uses this.
    """
    address = client.ip_address
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a test client, a Unix socket): as it is
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        network = ipaddress.IPv6Network((parsed, settings.rate_limit_ipv6_prefix), strict=False)
        return str(network)
    return str(parsed)
