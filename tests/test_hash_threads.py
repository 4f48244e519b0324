"""The hashing threads (authdb.hash_threads): idle priority, rescued when starved.

Starvation is simulated by holding a job on the idle thread: the mechanism is checked by who
ran what and what the callers got, never by a clock."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from authdb.hash_threads import STARVED_SHARE, HashThreads, _Job, _Lane
from authdb.passwords import Hasher
from tests.cli import AUTHDB, subprocess_env, wait_healthy
from tests.conftest import PASSWORD, free_port
from tests.test_multiprocess import prepare

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


def idle_thread_free(pool: HashThreads) -> None:
    """Wait until the idle thread of ``pool``'s first lane runs no job."""
    with pool._cond:
        assert pool._cond.wait_for(lambda: pool._lanes[0].current is None, WAIT)


def _threads_named(prefix: str) -> dict[str, threading.Thread]:
    return {t.name: t for t in threading.enumerate() if t.name.startswith(prefix)}


@linux_only
def test_the_hashing_thread_runs_at_idle_priority_and_its_rescuer_at_normal() -> None:
    pool = HashThreads(1, "idle", name="prio-test")
    try:
        # Answered by the idle thread, or by its rescuer on a machine too busy to run it.
        assert pool.submit(_runner).result(WAIT).startswith("prio-test-0")
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
        idle_thread_free(pool)
        assert held.result(WAIT) == "rescue-test-0-rescue"
        # Back to normal: once free, the idle thread takes the next job from the queue itself
        # (the rescuer may run it too if the machine starves it again).
        runs: list[str] = []
        pool.submit(lambda: runs.append(_runner())).result(WAIT)
        idle_thread_free(pool)
        assert "rescue-test-0" in runs
    finally:
        release.set()
        pool.shutdown()


def test_a_stream_of_jobs_does_not_wake_the_rescuer() -> None:
    """A rescuer at normal priority preempts the idle thread's hash whenever it wakes, so it
    sleeps on a timer (until a job could be overdue, or one patience after its lane goes
    quiet) instead of being woken by each job. Counted, not timed: with a patience of 30 s,
    the timer never fires during the test."""
    pool = HashThreads(1, "idle", name="quiet-test", cost=10.0)
    try:
        for _ in range(20):
            pool.submit(_runner).result(WAIT)
        lane = pool._lanes[0]
        # At most: woken to start watching once the idle thread has its priority, and by the
        # first job if the rescuer was asleep then. Each job used to wake it about 3 times.
        assert lane.wakeups <= 2, lane.wakeups
        assert pool.rescues == 0
    finally:
        pool.shutdown()


@linux_only
def test_a_rescuer_serving_the_queue_is_woken_by_each_new_job() -> None:
    """While the idle thread is stuck, the rescuer has no timer and ``submit`` wakes it."""
    pool = HashThreads(1, "idle", name="serve-test", cost=0.001)
    release, started = threading.Event(), threading.Event()
    try:
        held = pool.submit(held_once(release, started))
        assert started.wait(WAIT)
        assert held.result(WAIT) == "serve-test-0-rescue"
        for _ in range(3):  # one at a time: the queue is empty, the rescuer asleep, between
            assert pool.submit(_runner).result(WAIT) == "serve-test-0-rescue"
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
        # Each run appends: the idle thread's, and a rescuer's if the machine starves it.
        assert "dropped" not in ran and "kept" in ran
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

        def submit(self, work: Callable[..., Any], *args: Any, typical: bool = True) -> Future[Any]:
            work(*args)
            future: Future[Any] = Future()
            future.set_result(work(*args))
            return future

        def shutdown(self) -> None:
            pass

    hasher.close()
    hasher._threads = Twice()  # type: ignore[assignment]
    before = hasher.verifications
    assert (await hasher.verify("correct horse battery", stored))[0] is True
    assert (await hasher.verify("wrong horse battery", stored))[0] is False
    assert (await hasher.verify("any password", None))[0] is False
    assert hasher.verifications - before == 3


def test_where_idle_priority_is_refused_the_threads_run_plainly_and_no_rescuer_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refused)
    pool = HashThreads(1, "idle", name="refused-test")
    try:
        assert pool.submit(_runner).result(WAIT) == "refused-test-0"  # never rescued
        rescuer = _threads_named("refused-test").get("refused-test-0-rescue")
        if rescuer is not None:
            rescuer.join(WAIT)
            assert not rescuer.is_alive()
    finally:
        pool.shutdown()


def _policies(pid: int) -> list[int]:
    """The scheduling policy of each of ``pid``'s threads (proc(5): stat's 41st field)."""
    policies = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        policies.append(int(stat[stat.rindex(")") + 2 :].split()[38]))
    return policies


@linux_only
async def test_a_served_worker_checks_passwords_on_an_idle_priority_thread(
    tmp_path: Path, database_url: str
) -> None:
    """The default, end to end: ``authdb serve`` checks a sign-in's password on one
    SCHED_IDLE thread (its rescuer and every other thread at normal priority), and the
    sign-in is answered as usual."""
    env = {
        "AUTHDB_DATABASE_URL": database_url,
        "AUTHDB_SECRET_KEY": "hash-threads-test-secret-key-0123456789abcdef",
    }
    await prepare(env, "alice")
    port = free_port()
    base, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [AUTHDB, "serve", "--port", str(port)],
            env=subprocess_env({**env, "AUTHDB_PASSWORD_HASH_PRIORITY": "idle"}),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        await asyncio.to_thread(wait_healthy, base, process, log)
        assert os.SCHED_IDLE not in _policies(process.pid)  # threads start at the first hash
        form = {"username": "alice", "password": PASSWORD}
        answer = await asyncio.to_thread(httpx.post, f"{base}/token", data=form)
        assert answer.status_code == 200, answer.text
        policies = _policies(process.pid)
        assert policies.count(os.SCHED_IDLE) == 1, policies
        assert set(policies) == {os.SCHED_IDLE, os.SCHED_OTHER}
    finally:
        process.terminate()
        process.wait(timeout=20)


def _lane_of(**state: Any) -> _Lane:
    """An idle thread's lane in ``state``, for the rescuer's decisions (no thread runs)."""
    return _Lane(threading.Condition(), idle=True, **state)


def test_a_slow_job_that_makes_progress_is_not_rescued() -> None:
    """Past the patience, the rescuer reads the idle thread's CPU clock: a thread that got at
    least STARVED_SHARE of a core (a legacy bcrypt hash, say) is left to finish."""
    pool = HashThreads(1, "idle", cost=0.01)
    now = time.monotonic()
    clock = time.pthread_getcpuclockid(threading.get_ident())  # this thread stands for it
    job = _Job(_runner, started=now - 1.0)
    job.cpu_started = time.clock_gettime(clock) - (STARVED_SHARE + 0.05)  # 0.3 s of 1 s
    lane = _lane_of(current=job, clock=clock)
    assert pool._due(lane, now) == (None, pool.patience())
    assert not job.rescued
    job.cpu_started = time.clock_gettime(clock) - (STARVED_SHARE - 0.05)  # 0.2 s of 1 s
    assert pool._due(lane, now) == (job, None)
    assert job.rescued and pool.rescues == 1


def test_a_fair_share_among_busy_hashing_threads_is_not_starvation() -> None:
    """More idle threads running jobs than CPUs slow each other down: the share that counts
    as starved shrinks with the fair share, so that they do not rescue each other. A lane
    that runs alone among many idle lanes keeps the full share."""
    cpus = len(os.sched_getaffinity(0))
    pool = HashThreads(4 * cpus, "idle", cost=0.01)
    now = time.monotonic()
    clock = time.pthread_getcpuclockid(threading.get_ident())
    job = _Job(_runner, started=now - 1.0)
    # Half the starved share of one thread: a fair share among 4 busy threads per CPU.
    job.cpu_started = time.clock_gettime(clock) - STARVED_SHARE / 2
    lane = _lane_of(current=job, clock=clock)
    others = [_lane_of(current=_Job(_runner)) for _ in range(4 * cpus - 1)]
    pool._lanes = [lane, *others]
    assert pool._starved(lane, job, now) is False
    for other in others:
        other.current = None
    assert pool._starved(lane, job, now) is True


@linux_only
def test_an_idle_thread_starved_before_it_reports_its_priority_is_rescued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The idle thread puts itself in SCHED_IDLE, then tells its rescuer: starved in between,
    it has not taken the job, and the rescuer takes it after the patience."""
    import authdb.hash_threads as hash_threads

    gate = threading.Event()
    own_clock = hash_threads._own_cpu_clock

    def held_clock() -> int | None:  # runs on the idle thread, after SCHED_IDLE is set
        assert gate.wait(WAIT)
        return own_clock()

    monkeypatch.setattr(hash_threads, "_own_cpu_clock", held_clock)
    pool = HashThreads(1, "idle", name="early-test", cost=0.001)
    try:
        assert pool.submit(_runner).result(WAIT) == "early-test-0-rescue"
    finally:
        gate.set()
        pool.shutdown()


def test_a_job_left_in_the_queue_by_a_starved_free_thread_is_taken() -> None:
    """A free idle thread that has not taken a job within the patience is starved too."""
    pool = HashThreads(1, "idle", cost=0.01)
    now = time.monotonic()
    waiting = _Job(_runner, queued=now - 1.0)
    pool._queue.append(waiting)
    lane = _lane_of(free_since=now - 0.001)
    job, wait = pool._due(lane, now)  # free only just now: its turn to take it
    assert job is None and wait is not None and 0 < wait <= pool.patience()
    lane.free_since = now - 1.0
    assert pool._due(lane, now) == (waiting, None)
    assert waiting.rescued and not pool._queue
