"""The hashing threads (authdb.hash_threads): idle priority, rescued when starved.

Starvation is simulated by holding a job on the idle thread: the mechanism is checked by who
ran what and what the callers got, never by a clock."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest

from authdb.hash_threads import HashThreads
from authdb.passwords import Hasher

WAIT = 30  # seconds: a bound on a wait that should end at once, never a measurement

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="SCHED_IDLE is Linux's")


def _runner() -> str:
    return threading.current_thread().name


def held_once(release: threading.Event, started: threading.Event) -> Callable[[], str]:
    """A job whose first run (the idle thread's) waits for ``release``, as a starved thread
    would; a second run (the rescuer's) answers at once."""
    runs: list[str] = []

    def work() -> str:
        runs.append(_runner())
        if len(runs) == 1:
            started.set()
            assert release.wait(WAIT)
        return _runner()

    return work


def _threads_named(prefix: str) -> dict[str, threading.Thread]:
    return {t.name: t for t in threading.enumerate() if t.name.startswith(prefix)}


@linux_only
def test_the_hashing_thread_runs_at_idle_priority_and_its_rescuer_at_normal() -> None:
    pool = HashThreads(1, "idle", name="prio-test")
    try:
        assert pool.submit(_runner).result(WAIT) == "prio-test-0"
        threads = _threads_named("prio-test")
        assert set(threads) == {"prio-test-0", "prio-test-0-rescue"}
        idle, rescuer = threads["prio-test-0"], threads["prio-test-0-rescue"]
        assert idle.native_id is not None and rescuer.native_id is not None
        assert os.sched_getscheduler(idle.native_id) == os.SCHED_IDLE
        assert os.sched_getscheduler(rescuer.native_id) == os.SCHED_OTHER
    finally:
        pool.shutdown()


@linux_only
def test_a_starved_job_is_rescued_and_the_queue_served_until_the_idle_thread_is_back() -> None:
    pool = HashThreads(1, "idle", name="rescue-test")
    release, started = threading.Event(), threading.Event()
    try:
        held = pool.submit(held_once(release, started))
        assert started.wait(WAIT)
        queued = [pool.submit(_runner) for _ in range(3)]
        # The held job is answered by the rescuer's run; the queued ones by the rescuer too,
        # while the idle thread is still held.
        assert held.result(WAIT) == "rescue-test-0-rescue"
        assert [f.result(WAIT) for f in queued] == ["rescue-test-0-rescue"] * 3
        assert pool.rescues == 1
        release.set()  # the idle thread ends its run late: its answer is dropped
        with pool._cond:
            assert pool._cond.wait_for(lambda: pool._lanes[0].current is None, WAIT)
        assert held.result(WAIT) == "rescue-test-0-rescue"
        # Back to normal: once free, the idle thread takes the next jobs itself.
        later = pool.submit(_runner)
        assert later.result(WAIT) == "rescue-test-0"
    finally:
        release.set()
        pool.shutdown()


def test_normal_priority_has_no_rescuer() -> None:
    pool = HashThreads(2, "normal", name="normal-test")
    try:
        assert {pool.submit(_runner).result(WAIT) for _ in range(4)} <= {
            "normal-test-0",
            "normal-test-1",
        }
        assert set(_threads_named("normal-test")) == {"normal-test-0", "normal-test-1"}
        assert pool.rescues == 0
    finally:
        pool.shutdown()


@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_results_and_exceptions_reach_the_caller(priority: Any) -> None:
    pool = HashThreads(1, priority)

    def fails() -> None:
        raise ValueError("bad hash")

    try:
        assert pool.submit(lambda a, b: a + b, "x", "y").result(WAIT) == "xy"
        with pytest.raises(ValueError, match="bad hash"):
            pool.submit(fails).result(WAIT)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_a_job_cancelled_before_it_starts_never_runs(priority: Any) -> None:
    pool = HashThreads(1, priority)
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        started.set()
        assert gate.wait(WAIT)

    try:
        # Normal priority: the thread holds the first job. Idle: the rescuer may take the
        # held job over, so hold both runs.
        first = pool.submit(hold)
        assert started.wait(WAIT)
        dropped = pool.submit(ran.append, "dropped")
        assert dropped.cancel()
        gate.set()
        first.result(WAIT)
        assert pool.submit(ran.append, "kept").result(WAIT) is None
        with pytest.raises(CancelledError):
            dropped.result(0)
        assert ran == ["kept"]
    finally:
        gate.set()
        pool.shutdown()


def test_shutdown_finishes_queued_jobs_then_refuses_new_ones() -> None:
    pool = HashThreads(1, "idle", name="shutdown-test")
    gate = threading.Event()
    first = pool.submit(gate.wait, WAIT)
    rest = [pool.submit(_runner) for _ in range(3)]
    pool.shutdown()
    gate.set()
    assert first.result(WAIT) is True
    assert all(f.result(WAIT).startswith("shutdown-test-0") for f in rest)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(_runner)
    for thread in _threads_named("shutdown-test").values():
        thread.join(WAIT)
        assert not thread.is_alive()


def test_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HashThreads(0)


async def test_a_verify_run_twice_counts_once() -> None:
    """A rescued job runs on both threads; the hasher counts the verifications of the one
    answer its caller got (the count tests of equal work rely on it)."""
    hasher = Hasher(time_cost=1, memory_kib=8)
    stored = await hasher.hash("correct horse battery")

    class Twice:
        """Runs every job twice and answers the second run, as a rescue does."""

        def submit(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
            work(*args)
            future: Future[Any] = Future()
            future.set_result(work(*args))
            return future

        def shutdown(self) -> None:
            pass

    hasher._threads = Twice()  # type: ignore[assignment]
    before = hasher.verifications
    assert (await hasher.verify("correct horse battery", stored))[0] is True
    assert (await hasher.verify("wrong horse battery", stored))[0] is False
    assert (await hasher.verify("any password", None))[0] is False
    assert hasher.verifications - before == 3
