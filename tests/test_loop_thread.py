"""authdb.db.loop_thread: coroutines on an event loop of their own, in a thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from authdb.db.loop_thread import LoopThread


async def _nothing() -> None:
    pass


async def test_work_runs_on_the_thread_and_its_result_or_error_comes_back() -> None:
    thread = LoopThread("authdb-test-loop")
    caller = asyncio.get_running_loop()

    async def where() -> tuple[str, bool]:
        return threading.current_thread().name, asyncio.get_running_loop() is caller

    async def fails() -> None:
        raise ValueError("from the thread")

    try:
        assert await thread.run(where) == ("authdb-test-loop", False)
        with pytest.raises(ValueError, match="from the thread"):
            await thread.run(fails)
    finally:
        await thread.stop(_nothing)


async def test_a_cancelled_caller_leaves_the_work_to_finish() -> None:
    """As a write handed to a worker thread: a transaction is never cut between statements."""
    thread = LoopThread("authdb-test-loop")
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    async def work() -> None:
        started.set()
        await asyncio.to_thread(release.wait, 30)
        finished.set()

    try:
        caller = asyncio.create_task(thread.run(work))
        assert await asyncio.to_thread(started.wait, 30)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert not finished.is_set()
        release.set()
        assert await asyncio.to_thread(finished.wait, 30)
    finally:
        await thread.stop(_nothing)


async def test_stop_runs_the_last_work_ends_the_thread_and_a_run_starts_it_again() -> None:
    thread = LoopThread("authdb-test-loop")
    seen: list[str] = []

    async def last() -> None:
        seen.append(threading.current_thread().name)

    await thread.stop(last)  # never started: nothing to do
    assert seen == []
    await thread.run(_nothing)
    await thread.stop(last)
    assert seen == ["authdb-test-loop"]
    assert "authdb-test-loop" not in {t.name for t in threading.enumerate()}

    async def name() -> str:
        return threading.current_thread().name

    try:
        assert await thread.run(name) == "authdb-test-loop"
    finally:
        await thread.stop(_nothing)
