"""The audit trail: which security events write rows, and ``authdb audit`` to read them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from authdb.cli.audit import parse_since
from authdb.services import audit
from authdb.services.audit import list_events
from authdb.services.core import ClientInfo
from tests.cli import invoke_cli
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
AGENT = {"User-Agent": "audit-test/1.0"}
SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"


async def _login(harness: Harness, name: str, password: str) -> Any:
    return await harness.client.post(
        "/token", data={"username": name, "password": password}, headers=AGENT
    )


async def _events(harness: Harness) -> list[tuple[str, int | None]]:
    return [(e.event, e.user_id) for e in await list_events(harness.auth.core)]


async def test_login_failures_lockout_and_success_are_audited(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=2, login_lockout_minutes=1)
    user = await harness.create_user()
    for _ in range(2):
        assert (await _login(harness, "alice", "wrong password!")).status_code == 401
    assert (await _login(harness, "alice", PASSWORD)).status_code == 429
    later = datetime.now(UTC) + timedelta(minutes=2)
    harness.auth.core.clock = lambda: later
    assert (await _login(harness, "alice", PASSWORD)).status_code == 200
    assert (await _events(harness))[1:] == [
        ("login_failed", user.id),
        ("login_failed", user.id),
        ("lockout", user.id),
        ("login_locked", user.id),
        ("login_ok", user.id),
    ]
    events = await list_events(harness.auth.core)
    assert {(e.ip_address, e.user_agent) for e in events[1:]} == {("127.0.0.1", "audit-test/1.0")}
    assert events[-1].created_at == later
    assert events[-1].detail is not None and "session_id" in events[-1].detail


async def test_unknown_names_are_audited_without_a_user(make_harness: MakeHarness) -> None:
    harness = await make_harness(login_max_failures=1)
    for _ in range(2):
        await _login(harness, "nobody", "wrong password!")
    assert await _events(harness) == [
        ("login_failed", None),
        ("lockout", None),
        ("login_locked", None),
    ]


async def test_logout_token_reuse_and_refused_logins_are_audited(
    make_harness: MakeHarness,
) -> None:
    # No reuse interval: the second presentation is theft at once.
    harness = await make_harness(refresh_reuse_interval_seconds=0)
    user = await harness.create_user()
    tokens = await harness.login()
    first = tokens["refresh_token"]
    rotated = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": first}
    )
    assert rotated.status_code == 200
    reused = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": first}
    )
    assert reused.status_code == 401
    headers = await harness.bearer()
    assert (await harness.client.post("/logout", headers=headers)).status_code == 204
    await harness.create_user("bob", disabled=True)
    assert (await _login(harness, "bob", PASSWORD)).status_code == 400
    events = await list_events(harness.auth.core)
    names = [e.event for e in events]
    assert "refresh_token_reuse" in names
    assert ("logout", user.id) in [(e.event, e.user_id) for e in events]
    refused = next(e for e in events if e.event == "login_refused")
    assert refused.detail == {"reason": "Inactive user"}
    # Never a secret in the trail.
    dumped = json.dumps([e.detail for e in events]) + " ".join(str(e.user_agent) for e in events)
    assert PASSWORD not in dumped and first not in dumped


async def test_list_events_filters(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    core = harness.auth.core
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with core.sessionmaker.begin() as db:
        for minute in range(5):
            audit.record(
                db,
                f"event{minute}",
                client=None,
                now=start + timedelta(minutes=minute),
                user_id=minute % 2,
            )
    since = start + timedelta(minutes=2)
    assert [e.event for e in await list_events(core, since=since)] == [
        "event2",
        "event3",
        "event4",
    ]
    assert [e.event for e in await list_events(core, user_id=1)] == ["event1", "event3"]
    assert [e.event for e in await list_events(core, limit=2)] == ["event0", "event1"]
    assert [e.event for e in await list_events(core, limit=2, latest=True)] == [
        "event3",
        "event4",
    ]


# --- authdb audit ---------------------------------------------------------------------------


def _cli(harness: Harness, *args: str) -> Any:
    env = {"AUTHDB_DATABASE_URL": harness.auth.settings.database_url, "AUTHDB_SECRET_KEY": SECRET}
    return invoke_cli(["audit", *args], env=env)


async def test_audit_command_prints_and_filters_events(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    alice = await harness.create_user()
    await harness.create_user("bob")
    await _login(harness, "alice", "wrong password!")
    await _login(harness, "bob", PASSWORD)
    await _login(harness, "alice", PASSWORD)
    async with harness.auth.core.sessionmaker.begin() as db:
        sneaky = ClientInfo(ip_address="192.0.2.9", user_agent="evil\x1b[2J\u202eagent")
        audit.record(db, "login_failed", client=sneaky, now=datetime.now(UTC), user_id=alice.id)

    table = await asyncio.to_thread(_cli, harness)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "USER", "ACTOR", "IP", "USER", "AGENT", "DETAIL"]
    assert any("login_failed" in line and "audit-test/1.0" in line for line in lines)
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout
    assert "evil\\x1b[2J\\u202eagent" in table.stdout

    as_json = await asyncio.to_thread(_cli, harness, "--json", "--user", "ALICE")
    assert as_json.returncode == 0, as_json.stderr
    events = json.loads(as_json.stdout)
    expected = ["user_created", "login_failed", "login_ok", "login_failed"]
    assert [e["event"] for e in events] == expected
    assert {e["user_id"] for e in events} == {alice.id}
    first = events[1]
    assert first["ip_address"] == "127.0.0.1" and first["user_agent"] == "audit-test/1.0"
    assert first["time"].endswith("Z")
    assert set(first) == {
        "id",
        "time",
        "event",
        "user_id",
        "actor_id",
        "ip_address",
        "user_agent",
        "detail",
    }

    by_email = await asyncio.to_thread(_cli, harness, "--json", "--user", "alice@example.com")
    by_id = await asyncio.to_thread(_cli, harness, "--json", "--user", str(alice.id))
    assert json.loads(by_email.stdout) == events == json.loads(by_id.stdout)

    newest = await asyncio.to_thread(_cli, harness, "--json", "--limit", "2")
    assert [e["event"] for e in json.loads(newest.stdout)] == ["login_ok", "login_failed"]


async def test_audit_command_since_and_errors(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    await harness.create_user()
    recent = await asyncio.to_thread(_cli, harness, "--json", "--since", "1h")
    assert [e["event"] for e in json.loads(recent.stdout)] == ["user_created"]
    future = await asyncio.to_thread(_cli, harness, "--json", "--since", "2999-01-01T00:00:00Z")
    assert future.returncode == 0 and json.loads(future.stdout) == []

    for args, message in [
        (["--user", "ghost"], "error: no user 'ghost'"),
        (["--user", "424242"], "error: no user '424242'"),
        (["--since", "yesterday"], "error: invalid --since 'yesterday'"),
    ]:
        result = await asyncio.to_thread(_cli, harness, *args)
        assert result.returncode != 0
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),  # naive means UTC
        ("90s", datetime(2026, 6, 1, 11, 58, 30, tzinfo=UTC)),
        ("30m", datetime(2026, 6, 1, 11, 30, tzinfo=UTC)),
        ("2h", datetime(2026, 6, 1, 10, tzinfo=UTC)),
        ("7d", datetime(2026, 5, 25, 12, tzinfo=UTC)),
        ("1w", datetime(2026, 5, 25, 12, tzinfo=UTC)),
    ],
)
def test_parse_since(value: str, expected: datetime) -> None:
    assert parse_since(value, datetime(2026, 6, 1, 12, tzinfo=UTC)) == expected
