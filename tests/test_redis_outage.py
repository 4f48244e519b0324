"""A Redis that stops answering (paused, not dead) never holds a request past its timeout.

Limits fail open while it is down (the database lockout still holds), a circuit breaker keeps
requests from asking it again for ``BREAKER_SECONDS``, and limiting resumes once it answers.
The breaker's clock is one the test turns by hand, so nothing here depends on timing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis

from authdb.ratelimit import BREAKER_SECONDS, Breaker
from tests.conftest import PASSWORD, Harness
from tests.netfaults import BlackHole, TcpProxy

MakeHarness = Callable[..., Awaitable[Harness]]
WRONG = "not the right password"


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = await BlackHole().start()
    yield hole
    await hole.stop()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"authdb-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    try:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    finally:
        client.close()


def _manual_breaker(harness: Harness) -> ManualClock:
    clock = ManualClock()
    harness.auth.limits.breaker = Breaker(BREAKER_SECONDS, clock)
    return clock


async def _login(harness: Harness, password: str = WRONG) -> int:
    response = await harness.client.post("/token", data={"username": "alice", "password": password})
    return response.status_code


async def test_a_redis_that_never_answers_fails_open_after_one_bounded_try(
    make_harness: MakeHarness, black_hole: BlackHole, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await make_harness(
        redis_url=f"redis://127.0.0.1:{black_hole.port}/0",
        redis_timeout_seconds=0.2,
        rate_limit_login_failures="2/minute",
        login_max_failures=100,
    )
    clock = _manual_breaker(harness)
    await harness.create_user("alice")
    with caplog.at_level(logging.ERROR, logger="authdb"):
        statuses = [await _login(harness) for _ in range(4)]
    # Over the address budget of 2, yet unlimited: the store is down, limits fail open.
    assert statuses == [401, 401, 401, 401]
    breaker = harness.auth.limits.breaker
    assert breaker.is_open
    assert breaker.openings == 1
    # Only the first limiter call reached Redis; it was cut by the timeout, and every later
    # call of the four logins skipped the store instead of waiting again.
    assert black_hole.connections == 1
    assert black_hole.bytes_received > 0
    assert [r.getMessage() for r in caplog.records if "rate limit store" in r.getMessage()] == [
        "rate limit store unavailable (TimeoutError), not limiting; next try in 5 s"
    ]
    assert await _login(harness, PASSWORD) == 200
    # When the period is over, one request tries the store again, and only one.
    clock.advance(BREAKER_SECONDS)
    assert [await _login(harness) for _ in range(3)] == [401, 401, 401]
    assert black_hole.connections == 2
    assert breaker.is_open and breaker.openings == 1


async def test_limits_resume_when_a_paused_redis_answers_again(
    make_harness: MakeHarness, redis_prefix: str
) -> None:
    proxy = await TcpProxy(target_port=6379).up()
    try:
        harness = await make_harness(
            redis_url=f"redis://127.0.0.1:{proxy.port}/14",
            redis_key_prefix=redis_prefix,
            redis_timeout_seconds=0.3,
            rate_limit_login_failures="2/minute",
            login_max_failures=100,
        )
        clock = _manual_breaker(harness)
        await harness.create_user("alice")
        breaker = harness.auth.limits.breaker
        proxy.pause()  # Redis is still there, it just stops answering (like SIGSTOP)
        assert [await _login(harness) for _ in range(3)] == [401, 401, 401]
        assert breaker.is_open
        proxy.resume()
        clock.advance(BREAKER_SECONDS)
        # The next call finds Redis back: the breaker closes and the budget counts again.
        assert [await _login(harness) for _ in range(3)] == [401, 401, 429]
        assert not breaker.is_open
        assert breaker.openings == 1
    finally:
        await proxy.down()


async def test_a_failing_redis_is_skipped_while_the_breaker_is_open() -> None:
    clock = ManualClock()
    breaker = Breaker(5.0, clock)
    assert breaker.allows() and not breaker.is_open
    breaker.failed(TimeoutError())
    assert breaker.is_open and not breaker.allows()
    clock.advance(4.9)
    assert not breaker.allows()
    clock.advance(0.1)
    assert breaker.allows()  # this caller retries ...
    assert not breaker.allows()  # ... and the others keep skipping meanwhile
    breaker.succeeded()
    assert not breaker.is_open and breaker.allows()
    assert breaker.openings == 1
