"""IPv6 clients are rate-limited per network (``AUTHDB_RATE_LIMIT_IPV6_PREFIX``, /64).

One subscriber usually holds a whole /64: without this, each of its addresses would get a
budget of its own. The client address is set as a reverse proxy would, through a trusted
peer and ``X-Forwarded-For``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from authdb.services.audit import list_events
from tests.conftest import PASSWORD, Harness
from tests.test_ratelimit import client_at

MakeHarness = Callable[..., Awaitable[Harness]]
WRONG = "not the right password"
PROXY = "10.0.0.1"


async def _login(client: httpx.AsyncClient, forwarded: str | None, password: str = WRONG) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    response = await client.post(
        "/token", data={"username": "alice", "password": password}, headers=headers
    )
    return response.status_code


async def _limited_harness(make_harness: MakeHarness, **settings: object) -> Harness:
    defaults: dict[str, object] = {
        "trusted_proxies": "10.0.0.0/8",
        "rate_limit_login_failures": "20/minute",
        "login_max_failures": 1000,
    }
    harness = await make_harness(**{**defaults, **settings})
    await harness.create_user("alice")
    return harness


async def test_twenty_addresses_of_one_slash_64_share_one_failure_budget(
    make_harness: MakeHarness,
) -> None:
    harness = await _limited_harness(make_harness)
    async with client_at(harness, PROXY) as proxy:
        statuses = [await _login(proxy, f"2001:db8:1:2::{n:x}") for n in range(1, 21)]
        assert statuses == [401] * 20
        # A 21st address of the same /64 finds the budget spent, even with the password.
        assert await _login(proxy, "2001:db8:1:2:ffff:ffff:ffff:ffff", PASSWORD) == 429
        # The neighbouring /64 is another subscriber, with a budget of its own.
        assert await _login(proxy, "2001:db8:1:3::1", PASSWORD) == 200
    # The audit trail still records each client's own address, not the network.
    events = await list_events(harness.auth.core)
    failed = [e.ip_address for e in events if e.event == "login_failed"]
    assert len(set(failed)) == 20
    assert "2001:db8:1:2::1" in failed


async def test_ipv4_addresses_keep_a_budget_each(make_harness: MakeHarness) -> None:
    harness = await _limited_harness(make_harness, rate_limit_login_failures="2/minute")
    async with client_at(harness, PROXY) as proxy:
        assert [await _login(proxy, "198.51.100.7") for _ in range(2)] == [401, 401]
        assert await _login(proxy, "198.51.100.7", PASSWORD) == 429
        assert await _login(proxy, "198.51.100.8", PASSWORD) == 200


async def test_an_ipv4_mapped_address_is_the_ipv4_address(make_harness: MakeHarness) -> None:
    harness = await _limited_harness(make_harness, rate_limit_login_failures="2/minute")
    async with client_at(harness, PROXY) as proxy:
        assert await _login(proxy, "::ffff:198.51.100.7") == 401
        assert await _login(proxy, "198.51.100.7") == 401
        assert await _login(proxy, "[::ffff:198.51.100.7]:443", PASSWORD) == 429
        # Mapped addresses are not lumped into ::ffff:0:0/64 together.
        assert await _login(proxy, "::ffff:198.51.100.8", PASSWORD) == 200


async def test_the_prefix_length_is_a_setting(make_harness: MakeHarness) -> None:
    harness = await _limited_harness(
        make_harness, rate_limit_login_failures="2/minute", rate_limit_ipv6_prefix=48
    )
    async with client_at(harness, PROXY) as proxy:
        assert await _login(proxy, "2001:db8:1:1::1") == 401
        assert await _login(proxy, "2001:db8:1:2::1") == 401  # same /48
        assert await _login(proxy, "2001:db8:1:ffff::1", PASSWORD) == 429
        assert await _login(proxy, "2001:db8:2::1", PASSWORD) == 200  # another /48


async def test_a_direct_ipv6_peer_is_limited_by_its_network(make_harness: MakeHarness) -> None:
    harness = await _limited_harness(make_harness, rate_limit_login_failures="2/minute")
    for host in ("2001:db8:7::1", "2001:db8:7::2"):
        async with client_at(harness, host) as client:
            assert await _login(client, None) == 401
    async with client_at(harness, "2001:db8:7::3") as client:
        assert await _login(client, None, PASSWORD) == 429


async def test_registrations_are_limited_per_slash_64(make_harness: MakeHarness) -> None:
    harness = await make_harness(trusted_proxies="10.0.0.0/8", rate_limit_register="2/minute")
    async with client_at(harness, PROXY) as proxy:

        async def register(number: int, address: str) -> int:
            body = {
                "username": f"user{number}",
                "email": f"user{number}@example.com",
                "password": PASSWORD,
            }
            response = await proxy.post(
                "/register", json=body, headers={"X-Forwarded-For": address}
            )
            return response.status_code

        assert await register(1, "2001:db8:9:9::1") == 201
        assert await register(2, "2001:db8:9:9::2") == 201
        assert await register(3, "2001:db8:9:9::3") == 429
        assert await register(4, "2001:db8:9:a::1") == 201


async def test_mail_requests_are_limited_per_slash_64(make_harness: MakeHarness) -> None:
    harness = await make_harness(
        trusted_proxies="10.0.0.0/8", rate_limit_email_requests_per_address="2/minute"
    )
    async with client_at(harness, PROXY) as proxy:
        statuses = [
            (
                await proxy.post(
                    "/password/forgot",
                    json={"email": f"x{n}@example.com"},
                    headers={"X-Forwarded-For": f"2001:db8:4:4::{n + 1}"},
                )
            ).status_code
            for n in range(3)
        ]
        assert statuses == [202, 202, 429]
