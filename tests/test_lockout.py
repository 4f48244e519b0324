"""Per-account lockout: counted in the database, identical for names that match nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from authdb.db.models import LoginFailure
from authdb.services import lockout
from authdb.services.users import find_by_login
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
WRONG = "not the right password"


async def _login(harness: Harness, name: str, password: str = WRONG) -> httpx.Response:
    return await harness.client.post("/token", data={"username": name, "password": password})


def _outside(response: httpx.Response) -> tuple[Any, ...]:
    """What a client can see of a refused login, but the exact seconds to wait."""
    headers = response.headers
    return (
        response.status_code,
        response.json(),
        headers.get("www-authenticate"),
        headers.get("cache-control"),
        "retry-after" in headers,
        headers.get("content-type"),
    )


class FrozenClock:
    """Stands in for ``core.clock``; tests move it forward instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


async def test_account_locks_after_max_failures_even_for_the_right_password(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=3, login_lockout_minutes=15)
    await harness.create_user()
    for _ in range(3):
        response = await _login(harness, "alice")
        assert response.status_code == 401
        assert response.json()["detail"] == "Incorrect username or password"
    locked = await _login(harness, "alice", PASSWORD)
    assert locked.status_code == 429
    assert locked.json()["detail"] == "Too many requests"
    assert 0 < int(locked.headers["retry-after"]) <= 15 * 60
    assert locked.headers["cache-control"] == "no-store"


async def test_a_success_before_the_lock_resets_the_count(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=3)
    await harness.create_user()
    for _ in range(3):
        for _ in range(2):
            assert (await _login(harness, "alice")).status_code == 401
        assert (await _login(harness, "alice", PASSWORD)).status_code == 200


async def test_unknown_and_known_names_look_the_same_under_hammering(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=3, login_lockout_minutes=15)
    await harness.create_user()
    seen: dict[str, list[tuple[Any, ...]]] = {}
    waits: dict[str, int] = {}
    for name in ("alice", "nobody-at-all"):
        responses = [await _login(harness, name) for _ in range(6)]
        seen[name] = [_outside(r) for r in responses]
        waits[name] = int(responses[-1].headers["retry-after"])
    assert seen["alice"] == seen["nobody-at-all"]
    assert [status for status, *_ in seen["alice"]] == [401, 401, 401, 429, 429, 429]
    assert abs(waits["alice"] - waits["nobody-at-all"]) <= 2


async def test_failures_through_username_and_email_add_up(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=4)
    await harness.create_user()
    for name in ("alice", "ALICE@example.com", "Alice", "alice@EXAMPLE.com"):
        assert (await _login(harness, name)).status_code == 401
    assert (await _login(harness, "alice", PASSWORD)).status_code == 429
    assert (await _login(harness, "alice@example.com", PASSWORD)).status_code == 429


async def test_the_lock_expires_and_a_fresh_count_begins(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=15)
    clock = FrozenClock()
    harness.auth.core.clock = clock
    await harness.create_user()
    for _ in range(2):
        assert (await _login(harness, "alice")).status_code == 401
    clock.advance(minutes=14, seconds=50)
    almost = await _login(harness, "alice", PASSWORD)
    assert almost.status_code == 429
    assert int(almost.headers["retry-after"]) == 10
    clock.advance(seconds=10)
    # Expired: the count starts again from zero, so one failure does not re-lock.
    assert (await _login(harness, "alice")).status_code == 401
    assert (await _login(harness, "alice", PASSWORD)).status_code == 200


async def test_wrong_passwords_after_expiry_lock_again(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=1)
    clock = FrozenClock()
    harness.auth.core.clock = clock
    await harness.create_user()
    statuses = [(await _login(harness, "alice")).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    clock.advance(minutes=1)
    statuses = [(await _login(harness, "alice")).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]


async def test_hammering_a_locked_account_does_not_extend_the_lock(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=1, login_lockout_minutes=10)
    clock = FrozenClock()
    harness.auth.core.clock = clock
    await harness.create_user()
    assert (await _login(harness, "alice")).status_code == 401
    clock.advance(minutes=9)
    for _ in range(3):
        assert (await _login(harness, "alice")).status_code == 429
    clock.advance(minutes=1)
    assert (await _login(harness, "alice", PASSWORD)).status_code == 200


async def test_a_burst_of_concurrent_guesses_gets_no_more_than_the_limit(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=3)
    await harness.create_user()
    # All start before any hash is done: a check-then-count design would let every one in.
    responses = await asyncio.gather(*(_login(harness, "alice") for _ in range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 3 + [429] * 9


async def test_the_lock_is_kept_in_the_database_across_restarts(
    make_harness: MakeHarness,
) -> None:
    first = await make_harness(login_max_failures=2)
    await first.create_user()
    for _ in range(2):
        assert (await _login(first, "alice")).status_code == 401
    # A second app on the same database: another process, or the same one restarted.
    second = await make_harness(login_max_failures=2)
    assert (await _login(second, "alice", PASSWORD)).status_code == 429


async def test_a_disabled_user_with_the_right_password_is_refused_but_not_counted(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(login_max_failures=2)
    await harness.create_user(disabled=True)
    assert (await _login(harness, "alice")).status_code == 401
    inactive = await _login(harness, "alice", PASSWORD)
    assert inactive.status_code == 400
    assert inactive.json()["detail"] == "Inactive user"
    # The right password ended the run of failures: one more wrong one does not lock.
    assert (await _login(harness, "alice")).status_code == 401
    assert (await _login(harness, "alice", PASSWORD)).status_code == 400


async def test_idle_counters_are_pruned_but_live_locks_are_kept(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=60 * 48)
    clock = FrozenClock()
    harness.auth.core.clock = clock
    await harness.create_user()
    assert (await _login(harness, "ghost-one")).status_code == 401  # one failure, idle later
    for _ in range(2):
        await _login(harness, "alice")  # locked for two days
    clock.advance(days=1, seconds=1)
    async with harness.auth.core.sessionmaker.begin() as db:
        removed = await lockout.prune(db, clock(), idle=timedelta(days=1))
        keys = set((await db.scalars(select(LoginFailure.key))).all())
    assert removed == 1
    assert keys == {f"user:{(await _user_id(harness))}"}
    assert (await _login(harness, "alice", PASSWORD)).status_code == 429


async def _user_id(harness: Harness, name: str = "alice") -> int:
    async with harness.auth.core.sessionmaker() as db:
        user = await find_by_login(db, name)
    assert user is not None
    return user.id
