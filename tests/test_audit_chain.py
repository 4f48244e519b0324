"""The audit trail's hash chain, on SQLite and PostgreSQL: every committed event is linked to
the one before; ``authdb audit verify`` says "ok" or names the first event where the chain
breaks, whichever way the table was tampered with; and parallel writers keep one chain.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from authdb.services import audit, audit_chain
from authdb.services.audit_chain import GENESIS, link_hash
from authdb.services.core import ClientInfo
from tests.cli import invoke_cli, run_cli
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
NEW_PASSWORD = "another horse battery staple"
MOMENT = datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC)


def _cli(harness: Harness, *args: str) -> Any:
    env = {"AUTHDB_DATABASE_URL": harness.auth.settings.database_url, "AUTHDB_SECRET_KEY": SECRET}
    return invoke_cli(["audit", "verify", *args], env=env)


async def _sql(harness: Harness, statement: str, **params: Any) -> list[Any]:
    async with harness.auth.core.engine.begin() as connection:
        result = await connection.execute(text(statement), params)
        return list(result.all()) if result.returns_rows else []


async def _assert_linked(harness: Harness) -> list[Any]:
    """Every event in one chain: positions 1..N, each naming its predecessor's hash."""
    rows = await _sql(
        harness, "SELECT id, chain_seq, prev_hash, row_hash FROM audit_events ORDER BY chain_seq"
    )
    assert [row.chain_seq for row in rows] == list(range(1, len(rows) + 1))
    assert [row.prev_hash for row in rows] == [GENESIS] + [row.row_hash for row in rows[:-1]]
    # Positions are given out under the chain lock, where the ids are drawn too: same order.
    assert [row.id for row in rows] == sorted(row.id for row in rows)
    return rows


def test_the_hash_encoding_is_frozen() -> None:
    # Stored chains depend on these exact bytes: changing them breaks every deployment's trail.
    encoded = (
        '["authdb-audit-chain-1","' + GENESIS + '",1,"2026-01-02T03:04:05.006789Z","login_ok",'
        '7,null,"192.0.2.1","ua/1",{"a":"\\u00e9","b":1}]'
    )
    expected = hashlib.sha256(encoded.encode()).hexdigest()
    detail = {"b": 1, "a": "é"}
    assert link_hash(GENESIS, 1, MOMENT, "login_ok", 7, None, "192.0.2.1", "ua/1", detail) == (
        expected
    )
    elsewhere = MOMENT.astimezone(timezone(timedelta(hours=2)))  # the same instant
    assert link_hash(GENESIS, 1, elsewhere, "login_ok", 7, None, "192.0.2.1", "ua/1", detail) == (
        expected
    )
    # Fields cannot bleed into one another.
    assert link_hash(GENESIS, 1, MOMENT, "a", None, None, "b", None, None) != link_hash(
        GENESIS, 1, MOMENT, "a", None, None, None, "b", None
    )


async def test_a_mix_of_operations_leaves_a_chain_that_verifies(harness: Harness) -> None:
    await harness.create_user()
    registered = await harness.client.post(
        "/register",
        json={"username": "bob", "email": "bob@example.com", "password": PASSWORD},
    )
    assert registered.status_code == 201, registered.text
    bad = await harness.client.post("/token", data={"username": "alice", "password": "wrong!"})
    assert bad.status_code == 401
    headers = await harness.bearer()
    changed = await harness.client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 204, changed.text
    await harness.login("alice", NEW_PASSWORD)
    assert (await harness.client.post("/logout", headers=headers)).status_code == 204
    async with harness.auth.core.sessionmaker.begin() as db:
        # Fields as varied as the trail's: tuples and non-ASCII text survive the round trip.
        odd = ClientInfo(ip_address="2001:db8::1", user_agent="Bücher/1.0 \u202e")
        audit.record(db, "odd", client=odd, now=MOMENT, actor_id=3, fields=("a", "b"), n=1.5)

    rows = await _assert_linked(harness)
    events = [e.event for e in await audit.list_events(harness.auth.core)]
    assert {"user_created", "registered", "login_failed", "password_changed", "login_ok"} <= set(
        events
    )
    result = await asyncio.to_thread(_cli, harness)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ok: {len(rows)} events, head {rows[-1].row_hash}\n"


async def _fresh_chain(harness: Harness) -> list[Any]:
    """An emptied trail refilled with six events in three transactions; returns its rows."""
    await _sql(harness, "DELETE FROM audit_events")
    client = ClientInfo(ip_address="192.0.2.7", user_agent="tamper-test")
    for batch in range(3):
        async with harness.auth.core.sessionmaker.begin() as db:
            for n in range(2):
                now = MOMENT + timedelta(minutes=batch * 2 + n)
                audit.record(db, f"e{batch}{n}", client=client, now=now, user_id=n, step=batch)
    rows = await _assert_linked(harness)
    assert len(rows) == 6
    return rows


async def _forge_hash(harness: Harness, row_id: int, prev: str, seq: int) -> str:
    """The hash someone who knows the algorithm would give the row ``row_id`` at ``seq``."""
    events = await audit.list_events(harness.auth.core, limit=1_000_000)
    stored = next(e for e in events if e.id == row_id)  # fields decoded as the ORM reads them
    return link_hash(
        prev,
        seq,
        stored.created_at,
        stored.event,
        stored.user_id,
        stored.actor_id,
        stored.ip_address,
        stored.user_agent,
        stored.detail,
    )


async def test_tampering_is_named_at_the_first_event_touched(harness: Harness) -> None:
    # Each case: the SQL that tampers (ids of the fresh chain as :r1 .. :r6), the row verify
    # names (1-6, or 0 for a row the tampering adds) and why.
    edits = [
        ("UPDATE audit_events SET event = 'login_ok' WHERE id = :r3", 3, "hash mismatch"),
        ("UPDATE audit_events SET user_id = 99 WHERE id = :r3", 3, "hash mismatch"),
        ("UPDATE audit_events SET actor_id = 1 WHERE id = :r3", 3, "hash mismatch"),
        ("UPDATE audit_events SET ip_address = '10.0.0.1' WHERE id = :r4", 4, "hash mismatch"),
        ("UPDATE audit_events SET user_agent = NULL WHERE id = :r4", 4, "hash mismatch"),
        ("UPDATE audit_events SET detail = NULL WHERE id = :r5", 5, "hash mismatch"),
        ("UPDATE audit_events SET created_at = :later WHERE id = :r1", 1, "hash mismatch"),
        ("UPDATE audit_events SET row_hash = prev_hash WHERE id = :r6", 6, "hash mismatch"),
        ("DELETE FROM audit_events WHERE id = :r3", 4, "missing event before it"),
        ("DELETE FROM audit_events WHERE id = :r1", 2, "missing event before it"),
        ("UPDATE audit_events SET chain_seq = 0 WHERE id = :r2", 2, "position out of range"),
        (  # two events trade places
            "UPDATE audit_events SET chain_seq = -chain_seq WHERE id IN (:r3, :r4);"
            "UPDATE audit_events SET chain_seq = 4 WHERE id = :r3;"
            "UPDATE audit_events SET chain_seq = 3 WHERE id = :r4",
            4,
            "does not follow the event before it",
        ),
        (  # an event replayed at the end, hashes and all
            "INSERT INTO audit_events (created_at, event, user_id, actor_id, ip_address,"
            " user_agent, detail, chain_seq, prev_hash, row_hash) SELECT created_at, event,"
            " user_id, actor_id, ip_address, user_agent, detail, 7, prev_hash, row_hash"
            " FROM audit_events WHERE id = :r2",
            0,
            "does not follow the event before it",
        ),
        (  # an event forged at the end, linked to the head but not rightly hashed
            "INSERT INTO audit_events (created_at, event, chain_seq, prev_hash, row_hash)"
            " SELECT created_at, 'admin_granted', 7, row_hash, row_hash"
            " FROM audit_events WHERE id = :r6",
            0,
            "hash mismatch",
        ),
    ]
    for statements, named, reason in edits:
        rows = await _fresh_chain(harness)
        ids = {f"r{n}": row.id for n, row in enumerate(rows, 1)}
        values = {**ids, "later": MOMENT + timedelta(microseconds=1)}
        for statement in statements.split(";"):
            await _sql(
                harness, statement, **{k: v for k, v in values.items() if f":{k}" in statement}
            )
        report = await audit_chain.verify(harness.auth.core)
        [newest] = await _sql(harness, "SELECT max(id) AS id FROM audit_events")
        expected = newest.id if named == 0 else ids[f"r{named}"]
        assert (report.broken_at, report.reason) == (expected, reason), statements

    # An event forged in the middle, hashed right by someone who knows the algorithm: the
    # event after it no longer follows, unless every later hash is recomputed too.
    rows = await _fresh_chain(harness)
    await _sql(harness, "UPDATE audit_events SET chain_seq = chain_seq + 10 WHERE chain_seq > 3")
    await _sql(harness, "UPDATE audit_events SET chain_seq = chain_seq - 9 WHERE chain_seq > 10")
    await _sql(
        harness,
        "INSERT INTO audit_events (created_at, event, chain_seq, prev_hash, row_hash)"
        " VALUES (:at, 'admin_granted', 4, :prev, 'x')",
        at=MOMENT,
        prev=rows[2].row_hash,
    )
    [forged] = await _sql(harness, "SELECT id FROM audit_events WHERE chain_seq = 4")
    forged_hash = await _forge_hash(harness, forged.id, rows[2].row_hash, 4)
    await _sql(
        harness, "UPDATE audit_events SET row_hash = :h WHERE id = :id", h=forged_hash, id=forged.id
    )
    report = await audit_chain.verify(harness.auth.core)
    assert (report.broken_at, report.reason) == (rows[3].id, "does not follow the event before it")

    # Batches change nothing: a break past the first batch is found all the same.
    rows = await _fresh_chain(harness)
    await _sql(harness, "UPDATE audit_events SET event = 'x' WHERE id = :id", id=rows[4].id)
    report = await audit_chain.verify(harness.auth.core, batch=2)
    assert (report.count, report.broken_at) == (4, rows[4].id)
    assert (await audit_chain.verify(harness.auth.core, batch=3)).broken_at == rows[4].id

    # (In the same test, to share the database set-up.)
    await _a_recorded_head_catches_truncation_and_the_cli_names_the_break(harness)


async def _a_recorded_head_catches_truncation_and_the_cli_names_the_break(
    harness: Harness,
) -> None:
    rows = await _fresh_chain(harness)
    head = rows[-1].row_hash
    core = harness.auth.core
    assert (await audit_chain.verify(core, passes_through=rows[2].row_hash)).passed_through

    # The newest event deleted: the rest is a sound chain, but no longer passes through the
    # head an operator recorded.
    await _sql(harness, "DELETE FROM audit_events WHERE id = :id", id=rows[-1].id)
    report = await audit_chain.verify(core, passes_through=head)
    assert (report.ok, report.count, report.passed_through) == (True, 5, False)
    truncated = await asyncio.to_thread(_cli, harness, "--head", head.upper())
    assert (truncated.returncode, truncated.stdout) == (1, "")
    assert truncated.stderr == (
        f"error: audit chain does not pass through head {head}: events were deleted, "
        "or the trail was rewritten\n"
    )

    await _sql(harness, "UPDATE audit_events SET detail = NULL WHERE id = :id", id=rows[1].id)
    broken = await asyncio.to_thread(_cli, harness)
    assert (broken.returncode, broken.stdout) == (1, "")
    assert broken.stderr == f"error: audit chain broken at event {rows[1].id} (hash mismatch)\n"


def test_the_cli_refuses_a_malformed_head(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"
    env = {"AUTHDB_DATABASE_URL": url, "AUTHDB_SECRET_KEY": SECRET}
    result = run_cli(["audit", "verify", "--head", "not-a-hash"], env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr == ("error: invalid --head 'not-a-hash': expected 64 hexadecimal digits\n")


async def test_events_take_their_place_at_commit(harness: Harness) -> None:
    core = harness.auth.core
    with pytest.raises(RuntimeError):
        async with core.sessionmaker.begin() as db:
            audit.record(db, "rolled_back", client=None, now=MOMENT)
            await db.execute(text("SELECT 1"))  # an autoflush: the event waits for the commit
            query = "SELECT count(*) FROM audit_events WHERE event = 'rolled_back'"
            assert await db.scalar(text(query)) == 0
            raise RuntimeError
    async with core.sessionmaker() as db:  # closed without a commit
        audit.record(db, "never_committed", client=None, now=MOMENT)
        await db.flush()
    async with core.sessionmaker.begin() as db:
        for name in ("first", "second", "third"):
            audit.record(db, name, client=None, now=MOMENT)
    rows = await _assert_linked(harness)  # no gap where the rolled-back event was
    events = [e.event for e in await audit.list_events(core)]
    assert events[-3:] == ["first", "second", "third"]
    assert "rolled_back" not in events and "never_committed" not in events
    assert (await audit_chain.verify(core)).count == len(rows)


async def test_parallel_writers_keep_one_unbroken_chain(make_harness: MakeHarness) -> None:
    # Two apps on one database, each with its own connection pool: as two worker processes.
    first = await make_harness(login_max_failures=1000)
    second = await make_harness(login_max_failures=1000)
    names = [f"user{n}" for n in range(4)]
    for name in names:
        await first.create_user(name)

    async def login(n: int) -> int:
        client = (first, second)[n % 2].client
        password = PASSWORD if n % 3 else "wrong password!"
        data = {"username": names[n % len(names)], "password": password}
        return (await client.post("/token", data=data)).status_code

    async def record(n: int) -> None:
        async with (first, second)[n % 2].auth.core.sessionmaker.begin() as db:
            for k in range(3):
                audit.record(db, "burst", client=None, now=datetime.now(UTC), n=n, k=k)

    statuses = await asyncio.gather(*(login(n) for n in range(40)))
    assert sorted(set(statuses)) == [200, 401], statuses
    await asyncio.gather(*(record(n) for n in range(30)))

    rows = await _assert_linked(first)
    assert len(rows) >= len(names) + 40 + 90
    report = await audit_chain.verify(second.auth.core)
    assert (report.ok, report.count, report.head) == (True, len(rows), rows[-1].row_hash)
    # A transaction's events stay together and in the order recorded.
    bursts = [
        (e.detail or {}).get("k")
        for e in await audit.list_events(first.auth.core, limit=1000)
        if e.event == "burst"
    ]
    assert bursts == [0, 1, 2] * 30


# PostgreSQL refuses such values itself (timestamptz, json): SQLite only.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_field_edited_into_garbage_is_named_not_a_crash(make_harness: MakeHarness) -> None:
    """SQLite stores whatever it is given: a time or a JSON detail edited into text that no
    longer converts is named as the broken event, after any earlier break in its batch."""
    harness = await make_harness()
    for column in ("detail", "created_at"):
        rows = await _fresh_chain(harness)
        garbage = f"UPDATE audit_events SET {column} = 'garbage' WHERE id = :id"  # noqa: S608
        await _sql(harness, garbage, id=rows[3].id)
        report = await audit_chain.verify(harness.auth.core)
        assert report.broken_at == rows[3].id and report.reason is not None, column
        assert report.reason.startswith("unreadable"), report.reason
        # An earlier break in the same batch is still the one named.
        await _sql(harness, "UPDATE audit_events SET event = 'x' WHERE id = :id", id=rows[1].id)
        report = await audit_chain.verify(harness.auth.core)
        assert (report.broken_at, report.reason) == (rows[1].id, "hash mismatch")
