"""``auth_changes`` (SQLite's announcements of changed users, read by every process's session
cache) does not grow without bound: pruning keeps the newest ``KEEP_CHANGES`` rows, and a
process that fell further behind than that empties its whole cache instead of missing one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, insert, select

from authdb.db.models import AuthChange
from authdb.db.session_cache import CachedReader, SessionCache, SQLiteFeed
from authdb.db.session_reader import LiveRow
from authdb.services import sessions
from tests.conftest import Harness

MakeHarness = Callable[..., Awaitable[Harness]]


async def _count(harness: Harness) -> int:
    async with harness.auth.core.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(AuthChange)) or 0)


async def test_prune_keeps_the_newest_changes(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = await make_harness()
    async with harness.auth.core.sessionmaker.begin() as db:
        await db.execute(insert(AuthChange), [{"user_id": n} for n in range(1, 21)])
    monkeypatch.setattr(sessions, "KEEP_CHANGES", 5)
    await sessions.prune(harness.auth.core)
    async with harness.auth.core.sessionmaker() as db:
        kept = list((await db.scalars(select(AuthChange.user_id).order_by(AuthChange.id))).all())
    assert kept == [16, 17, 18, 19, 20]


# auth_changes is SQLite's feed; PostgreSQL announces changes with NOTIFY (no rows to prune).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_process_behind_the_pruned_rows_empties_its_cache(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = await make_harness()
    reader = harness.auth.core.session_reader
    assert isinstance(reader, CachedReader)
    feed = SQLiteFeed(reader.reader, SessionCache(10))  # type: ignore[arg-type]
    cache = feed._cache
    assert await feed.ready()
    user = {"id": 999}
    cache.put(1, LiveRow(1, harness.auth.core.clock(), user), cache.generation)
    assert len(cache) == 1
    async with harness.auth.core.sessionmaker.begin() as db:
        await db.execute(insert(AuthChange), [{"user_id": n} for n in range(1, 21)])
    monkeypatch.setattr(sessions, "KEEP_CHANGES", 5)
    await sessions.prune(harness.auth.core)  # rows 1-15 go before this process read them
    assert await feed.ready()
    assert len(cache) == 0  # user 999 was never named, but the gap empties everything
