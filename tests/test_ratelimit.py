"""Per-address and per-email rate limits, in memory and in Redis, and who the client is."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from starlette.requests import Request

from authdb import Settings
from authdb.app import create_app
from authdb.errors import TooManyRequests
from authdb.http.client import ClientResolver, parse_address
from authdb.ratelimit import RateLimits, storage_uri
from authdb.services.audit import list_events
from tests.conftest import PASSWORD, Harness, free_port

MakeHarness = Callable[..., Awaitable[Harness]]
WRONG = "not the right password"
# A database number of its own, and a prefix per test: only keys this test made are deleted.
REDIS_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix; every key under it is deleted afterwards (nothing else is)."""
    prefix = f"authdb-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    finally:
        client.close()


async def _login(
    client: httpx.AsyncClient, name: str, password: str = WRONG, x_forwarded_for: str = ""
) -> httpx.Response:
    headers = {"X-Forwarded-For": x_forwarded_for} if x_forwarded_for else {}
    return await client.post(
        "/token", data={"username": name, "password": password}, headers=headers
    )


@asynccontextmanager
async def client_at(harness: Harness, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another client of the same started app, connecting from ``host``."""
    transport = httpx.ASGITransport(app=create_app(auth=harness.auth), client=(host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# --- failed logins per client address ----------------------------------------------------------


async def test_over_its_failure_budget_an_address_gets_429_whatever_the_password(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(rate_limit_login_failures="3/minute", login_max_failures=100)
    await harness.create_user()
    for name in ("alice", "bob", "carol"):
        assert (await _login(harness.client, name)).status_code == 401
    limited = await _login(harness.client, "alice", PASSWORD)
    assert limited.status_code == 429
    assert limited.json()["detail"] == "Too many requests"
    assert 0 < int(limited.headers["retry-after"]) <= 60
    assert limited.headers["cache-control"] == "no-store"
    unknown = await _login(harness.client, "nobody")
    assert (unknown.status_code, unknown.json()) == (429, limited.json())


async def test_successful_logins_do_not_count_against_the_failure_budget(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(rate_limit_login_failures="3/minute", login_max_failures=100)
    await harness.create_user()
    assert (await _login(harness.client, "alice")).status_code == 401
    assert (await _login(harness.client, "alice")).status_code == 401
    for _ in range(6):
        assert (await _login(harness.client, "alice", PASSWORD)).status_code == 200
    assert (await _login(harness.client, "alice")).status_code == 401
    assert (await _login(harness.client, "alice", PASSWORD)).status_code == 429


async def test_attempts_on_a_locked_account_spend_the_address_budget(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(rate_limit_login_failures="4/minute", login_max_failures=2)
    await harness.create_user()
    statuses = [(await _login(harness.client, "alice")).status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429]  # two failures, then the lock answers
    await harness.create_user("bob")
    # The address has now spent its four: bob, not locked, is refused as well.
    assert (await _login(harness.client, "bob", PASSWORD)).status_code == 429


async def test_each_address_has_its_own_budget(make_harness: MakeHarness) -> None:
    harness = await make_harness(rate_limit_login_failures="2/minute", login_max_failures=100)
    await harness.create_user()
    async with client_at(harness, "192.0.2.10") as first, client_at(harness, "192.0.2.11") as other:
        for _ in range(2):
            assert (await _login(first, "alice")).status_code == 401
        assert (await _login(first, "alice", PASSWORD)).status_code == 429
        assert (await _login(other, "alice", PASSWORD)).status_code == 200


# --- Redis: one budget for every process ------------------------------------------------------


async def test_redis_shares_the_budget_between_app_instances(
    make_harness: MakeHarness, redis_prefix: str
) -> None:
    settings = {
        "redis_url": REDIS_URL,
        "redis_key_prefix": redis_prefix,
        "rate_limit_login_failures": "4/minute",
        "login_max_failures": 100,
    }
    first = await make_harness(**settings)
    second = await make_harness(**settings)  # as another process would be
    await first.create_user()
    for harness in (first, second, first, second):
        assert (await _login(harness.client, "alice")).status_code == 401
    assert (await _login(first.client, "alice", PASSWORD)).status_code == 429
    assert (await _login(second.client, "alice", PASSWORD)).status_code == 429
    keys = redis.Redis.from_url(REDIS_URL).keys(f"{redis_prefix}:*")
    assert any(b"login_failures/127.0.0.1" in key for key in keys)


async def test_without_redis_each_instance_counts_alone(make_harness: MakeHarness) -> None:
    settings = {"rate_limit_login_failures": "2/minute", "login_max_failures": 100}
    first = await make_harness(**settings)
    second = await make_harness(**settings)
    await first.create_user()
    for _ in range(2):
        assert (await _login(first.client, "alice")).status_code == 401
    assert (await _login(first.client, "alice", PASSWORD)).status_code == 429
    assert (await _login(second.client, "alice", PASSWORD)).status_code == 200


async def test_rate_limits_class_with_redis_storage(redis_prefix: str) -> None:
    settings = Settings(
        _env_file=None,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        redis_timeout_seconds=5,  # a loaded machine must not look like an outage
        rate_limit_register="2/minute",
        rate_limit_email_requests="1/hour",
    )
    limits = RateLimits(settings)
    assert type(limits.storage).__name__ == "RedisStorage"
    await limits.hit("register", "192.0.2.1")
    await limits.check("register", "192.0.2.1")
    await limits.hit("register", "192.0.2.1")
    with pytest.raises(TooManyRequests) as refused:
        await limits.check("register", "192.0.2.1")
    assert 0 < refused.value.retry_after <= 60
    await limits.hit("register", "192.0.2.2")  # another address, another budget
    # Another instance (another process) sees the same counters.
    again = RateLimits(settings)
    with pytest.raises(TooManyRequests):
        await again.hit("register", "192.0.2.1")
    await again.hit("email", "alice@example.com")
    with pytest.raises(TooManyRequests) as hourly:
        await limits.hit("email", "alice@example.com")
    assert 3500 < hourly.value.retry_after <= 3600


async def test_rate_limits_class_in_memory() -> None:
    settings = Settings(_env_file=None, rate_limit_email_requests_per_address="2/minute")
    limits = RateLimits(settings)
    assert type(limits.storage).__name__ == "MemoryStorage"
    await limits.hit("email_address", "192.0.2.1")
    await limits.hit("email_address", "192.0.2.1")
    with pytest.raises(TooManyRequests):
        await limits.hit("email_address", "192.0.2.1")
    # A fresh instance is a fresh process: memory is not shared.
    await RateLimits(settings).check("email_address", "192.0.2.1")


@pytest.mark.parametrize(
    ("redis_url", "uri"),
    [
        (None, "async+memory://"),
        ("redis://127.0.0.1:6379/3", "async+redis://127.0.0.1:6379/3"),
        ("rediss://:secret@cache.internal:6380/0", "async+rediss://:secret@cache.internal:6380/0"),
        ("async+redis://127.0.0.1:6379", "async+redis://127.0.0.1:6379"),
    ],
)
def test_storage_uri(redis_url: str | None, uri: str) -> None:
    assert storage_uri(redis_url) == uri


# --- registrations and verify/forgot requests --------------------------------------------------


def _registration(number: int) -> dict[str, str]:
    return {
        "username": f"user{number}",
        "email": f"user{number}@example.com",
        "password": PASSWORD,
    }


async def test_registrations_are_limited_per_address(make_harness: MakeHarness) -> None:
    harness = await make_harness(rate_limit_register="2/minute")
    for number in range(2):
        response = await harness.client.post("/register", json=_registration(number))
        assert response.status_code == 201, response.text
    limited = await harness.client.post("/register", json=_registration(9))
    assert limited.status_code == 429
    assert "retry-after" in limited.headers
    async with client_at(harness, "192.0.2.20") as other:
        assert (await other.post("/register", json=_registration(9))).status_code == 201


@pytest.mark.parametrize("path", ["/verify/request", "/password/forgot"])
async def test_mail_requests_are_limited_per_email_the_same_for_unknown_addresses(
    make_harness: MakeHarness, path: str
) -> None:
    harness = await make_harness(rate_limit_email_requests="2/hour")
    await harness.create_user(is_verified=False)
    outside: dict[str, list[tuple[int, Any, bool]]] = {}
    for email in ("alice@example.com", "nobody@example.com"):
        responses = [await harness.client.post(path, json={"email": email}) for _ in range(3)]
        outside[email] = [(r.status_code, r.json(), "retry-after" in r.headers) for r in responses]
    assert outside["alice@example.com"] == outside["nobody@example.com"]
    assert [status for status, *_ in outside["alice@example.com"]] == [202, 202, 429]
    assert outside["alice@example.com"][-1][2] is True


async def test_mail_requests_are_limited_per_client_address(make_harness: MakeHarness) -> None:
    harness = await make_harness(rate_limit_email_requests_per_address="3/minute")
    statuses = [
        (
            await harness.client.post("/password/forgot", json={"email": f"x{n}@example.com"})
        ).status_code
        for n in range(4)
    ]
    assert statuses == [202, 202, 202, 429]


# --- the client address behind proxies ----------------------------------------------------------


async def test_trusted_proxy_forwarded_address_gets_its_own_budget(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(
        trusted_proxies="10.0.0.0/8", rate_limit_login_failures="2/minute", login_max_failures=100
    )
    await harness.create_user()
    async with client_at(harness, "10.0.0.1") as proxy:
        for _ in range(2):
            response = await _login(proxy, "alice", x_forwarded_for="198.51.100.7")
            assert response.status_code == 401
        limited = await _login(proxy, "alice", PASSWORD, x_forwarded_for="198.51.100.7")
        assert limited.status_code == 429
        # A client further out, behind two proxies of ours: still its own budget.
        chain = "198.51.100.8, 10.1.2.3"
        assert (await _login(proxy, "alice", PASSWORD, x_forwarded_for=chain)).status_code == 200
    events = await list_events(harness.auth.core)
    assert [e.ip_address for e in events if e.event == "login_failed"] == ["198.51.100.7"] * 2
    assert [e.ip_address for e in events if e.event == "login_ok"] == ["198.51.100.8"]


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(rate_limit_login_failures="2/minute", login_max_failures=100)
    await harness.create_user()
    for number in range(2):
        forged = f"203.0.113.{number}"
        assert (await _login(harness.client, "alice", x_forwarded_for=forged)).status_code == 401
    # A new made-up address each time does not buy a new budget.
    response = await _login(harness.client, "alice", PASSWORD, x_forwarded_for="203.0.113.99")
    assert response.status_code == 429
    events = await list_events(harness.auth.core)
    assert {e.ip_address for e in events if e.event == "login_failed"} == {"127.0.0.1"}


def _request(peer: str | None, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": headers,
        "client": (peer, 1234) if peer else None,
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "expected"),
    [
        ([], "198.51.100.1", ["203.0.113.5"], "198.51.100.1"),  # nobody trusted
        (["10.0.0.1"], "198.51.100.1", ["203.0.113.5"], "198.51.100.1"),  # peer not a proxy
        (["10.0.0.1"], "10.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        (["10.0.0.1"], "10.0.0.1", [], "10.0.0.1"),  # a proxy's own request
        # The client wrote the left part; our proxy appended the right-most hop.
        (["10.0.0.1"], "10.0.0.1", ["6.6.6.6, 203.0.113.5"], "203.0.113.5"),
        # A forged header line first, the proxy's own line after it: both are read.
        (["10.0.0.1"], "10.0.0.1", ["6.6.6.6", "203.0.113.5"], "203.0.113.5"),
        (["10.0.0.0/8"], "10.0.0.1", ["6.6.6.6, 203.0.113.5, 10.9.9.9"], "203.0.113.5"),
        (["10.0.0.0/8"], "10.0.0.1", ["10.2.2.2, 10.9.9.9"], "10.2.2.2"),  # all internal
        (["10.0.0.0/8"], "10.0.0.1", ["203.0.113.5:5555"], "203.0.113.5"),
        (["10.0.0.0/8"], "10.0.0.1", ["[2001:db8::5]:443"], "2001:db8::5"),
        (["10.0.0.0/8"], "10.0.0.1", ["6.6.6.6, garbage, 10.9.9.9"], "10.9.9.9"),
        (["10.0.0.0/8"], "::ffff:10.0.0.1", ["203.0.113.5"], "203.0.113.5"),  # dual stack
        (["2001:db8::/32"], "2001:db8::1", ["2001:DB8:0:0::7, 2001:db8::2"], "2001:db8::7"),
        ([], None, ["203.0.113.5"], None),
    ],
)
def test_client_resolver(
    trusted: list[str], peer: str | None, forwarded: list[str], expected: str | None
) -> None:
    assert ClientResolver(trusted).address(_request(peer, *forwarded)) == expected


def test_parse_address() -> None:
    assert str(parse_address(" 192.0.2.1 ")) == "192.0.2.1"
    assert parse_address("unknown") is None
    assert parse_address("[2001:db8::1") is None
    # A zone is the sender's interface, any text a forwarder wrote: never kept.
    assert str(parse_address("fe80::1%" + "A" * 80)) == "fe80::1"
    assert str(parse_address("[fe80::1%eth0]:443")) == "fe80::1"
    assert str(parse_address("::ffff:192.0.2.1%x")) == "192.0.2.1"


async def test_a_forwarded_zone_never_reaches_the_database(
    make_harness: Callable[..., Awaitable[Harness]],
) -> None:
    """A long zone on a forwarded IPv6 address was stored as the client's address (a 500 on
    PostgreSQL past 64 characters)."""
    harness = await make_harness(trusted_proxies="127.0.0.1")
    await harness.create_user()
    response = await harness.client.post(
        "/token",
        data={"username": "alice", "password": PASSWORD},
        headers={"X-Forwarded-For": "fe80::1%" + "A" * 80},
    )
    assert response.status_code == 200, response.text
    events = await list_events(harness.auth.core)
    assert [e.ip_address for e in events if e.event == "login_ok"] == ["fe80::1"]


def test_trusted_proxies_setting_is_validated_at_start() -> None:
    settings = Settings(_env_file=None, trusted_proxies="10.0.0.0/8, 192.0.2.1")
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]
    with pytest.raises(ValueError, match="not an IP address or network"):
        Settings(_env_file=None, trusted_proxies="10.0.0.0/8, proxy.internal")


async def test_unreachable_redis_fails_open_to_the_database_lockout(
    make_harness: Callable[..., Awaitable[Harness]],
) -> None:
    harness = await make_harness(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", login_max_failures=2
    )
    await harness.create_user("alice")
    statuses = []
    for _ in range(3):
        response = await harness.client.post(
            "/token", data={"username": "alice", "password": "wrong password"}
        )
        statuses.append(response.status_code)
    assert statuses == [401, 401, 429]
    assert (
        await harness.client.post("/token", data={"username": "bob", "password": "x"})
    ).status_code == 401
