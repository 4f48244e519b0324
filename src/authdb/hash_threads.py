"""Threads for password hashing that give way to the rest of the process.

A hash is tens of milliseconds of CPU that only its own sign-in waits for. Run at the operating
system's idle priority (Linux ``SCHED_IDLE``, sched(7)), a hashing thread is preempted as soon
as the event loop, or anything else on the machine, wants the core: an application's other
requests are answered as quickly during a login storm as without one.

Idle priority alone would starve sign-ins while the core is saturated by other work. So each
idle thread has a *rescuer* at normal priority, which steps in when the idle thread is starved:

* its current job has run for more than ``PATIENCE`` times the usual cost of a job (wall time)
  while the thread got less than ``STARVED_SHARE`` of a core (of its fair share, while more
  idle threads run jobs than there are CPUs): the rescuer runs the job again
  (jobs are pure functions of their arguments) and answers it, then serves the queue while
  the idle thread stays stuck. The first run to finish answers; the other's result is dropped;
* or a job has waited in the queue that long while the idle thread was free to take it.

Under saturation sign-ins thus get the share of the core a normal thread gets, later by about
the patience. A slow job on a thread that is making progress (a legacy bcrypt hash) is left
alone.

A rescuer is woken by its timer, not by every job: each wake-up at normal priority preempts
the idle thread's hash. It sleeps until the next job could be overdue, lingers on a timer for
one patience after its lane goes quiet (so that a stream of sign-ins never wakes it), and only
a rescuer with no timer (a quiet lane, or one serving the queue) is woken by ``submit``.

Where ``SCHED_IDLE`` cannot be set (not Linux, or refused), the thread runs at normal priority
and its rescuer ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from authdb import metrics
from authdb.settings import PasswordHashPriority as Priority

log = logging.getLogger("authdb.passwords")

# A job overdue by this many times the usual cost of a job may be rescued.
PATIENCE = 3.0
# Never rescue sooner: a cheap job (the tests' hashes) is late by scheduling noise alone.
MIN_PATIENCE_SECONDS = 0.02
# A thread that got less than this share of a core during its job counts as starved.
STARVED_SHARE = 0.25
_SMOOTHING = 0.2  # weight of the newest measurement in the moving average of the cost


@dataclass(eq=False)
class _Job:
    work: Callable[[], Any]
    queued: float = field(default_factory=time.monotonic)
    future: Future[Any] = field(default_factory=Future)
    started: float = 0.0  # time.monotonic() when the idle thread began it
    cpu_started: float = 0.0  # the idle thread's CPU clock then, in seconds
    rescued: bool = False  # a rescuer runs it (again), or took it from the queue
    typical: bool = True  # its cost is the usual one (feeds the estimate the patience uses)
    answered: bool = False


@dataclass(eq=False)
class _Lane:
    """One idle thread and its rescuer."""

    watch: threading.Condition  # the rescuer waits on it (HashThreads' lock)
    current: _Job | None = None  # the job the idle thread is running
    free_since: float = field(default_factory=time.monotonic)  # when it last became free
    idle: bool | None = None  # SCHED_IDLE was set on the thread (None: not tried yet)
    clock: int | None = None  # the idle thread's CPU-time clock, for clock_gettime
    done: bool = False  # the idle thread has ended
    asleep: bool = False  # the rescuer waits with no timer: a new job must wake it
    wakeups: int = 0  # the rescuer's returns from waiting (tests count them, not time)


class HashThreads:
    """``count`` hashing threads at ``priority`` (``"idle"``: each with a rescuer, see the
    module's docstring), sharing one queue of jobs.

    ``cost`` is the expected seconds of one job at first (the hasher measures one hash when it
    is made). With ``single_threaded`` (argon2 with one lane: a job's work is done on the
    thread that runs it) the estimate follows the CPU time of the typical jobs and a starved
    thread is told by its CPU clock; otherwise the wall time alone decides. A thread counts
    as starved below STARVED_SHARE of a core, or below that share of its fair share while
    more idle threads run jobs than the process has CPUs (they then slow each other).

    ``submit`` returns a ``concurrent.futures.Future``; cancelling it before a thread starts it
    drops the job. Threads start at the first ``submit``; ``shutdown`` ends them once the queue
    is empty, without waiting.
    """

    def __init__(
        self,
        count: int,
        priority: Priority = "idle",
        name: str = "authdb-hash",
        *,
        cost: float = 0.05,
        single_threaded: bool = True,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._count, self._priority, self.name = count, priority, name
        self._single_threaded = single_threaded
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # idle threads wait on it for jobs
        self._queue: deque[_Job] = deque()
        self._lanes: list[_Lane] = []
        self._cost = cost
        self._cpus = usable_cpus()
        self._closed = False
        # Jobs run again by a rescuer so far: lets tests see the mechanism without timing it.
        self.rescues = 0

    def submit(self, work: Callable[..., Any], *args: Any, typical: bool = True) -> Future[Any]:
        """Queue ``work(*args)``; its future gets the return value or the exception raised.
        ``typical=False``: a job whose cost is not the usual one (a legacy hash) and must not
        move the estimate the patience is reckoned from.

        Raises RuntimeError after ``shutdown`` (or if a thread cannot be started).
        """
        job = _Job(lambda: work(*args), typical=typical)
        with self._cond:
            if self._closed:
                raise RuntimeError("the hashing threads are shut down")
            if not self._lanes:
                self._start()
            self._queue.append(job)
            self._cond.notify_all()  # each free idle thread: one of them may be starved
            for lane in self._lanes:
                if lane.asleep:
                    lane.watch.notify()
        return job.future

    def shutdown(self) -> None:
        """End the threads once the queued jobs are done (without waiting for them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def patience(self) -> float:
        """Seconds of wall time an idle thread's job may take before it may be rescued."""
        return max(PATIENCE * self._cost, MIN_PATIENCE_SECONDS)

    def _start(self) -> None:
        for index in range(self._count):
            lane = _Lane(threading.Condition(self._lock))
            self._thread(self._run_idle, lane, f"{self.name}-{index}")
            if self._priority == "idle":
                self._thread(self._run_rescuer, lane, f"{self.name}-{index}-rescue")
            self._lanes.append(lane)  # only once its threads run: else the next submit retries

    @staticmethod
    def _thread(target: Callable[[_Lane], None], lane: _Lane, name: str) -> None:
        # A daemon: a hash still queued must not hold the interpreter open at exit.
        threading.Thread(target=target, args=(lane,), name=name, daemon=True).start()

    def _run_idle(self, lane: _Lane) -> None:
        try:
            if self._priority == "idle":
                self._lower_priority(lane)
            while (job := self._next_for_idle(lane)) is not None:
                outcome = _run(job)
                self._finish(job, outcome, time.thread_time() - job.cpu_started, lane)
        finally:
            with self._cond:
                lane.done = True
                lane.watch.notify()

    def _lower_priority(self, lane: _Lane) -> None:
        idle = _lower_own_priority()
        clock = _own_cpu_clock() if self._single_threaded else None
        with self._cond:
            lane.idle, lane.clock = idle, clock
            lane.watch.notify()  # it starts watching, or ends if there is nothing to watch

    def _next_for_idle(self, lane: _Lane) -> _Job | None:
        with self._cond:
            while True:
                job = self._take()
                if job is not None:
                    # The rescuer is on a timer that ends before this job can be overdue.
                    job.started, job.cpu_started = time.monotonic(), time.thread_time()
                    lane.current = job
                    return job
                if self._closed:
                    return None
                self._cond.wait()

    def _take(self) -> _Job | None:
        """The next queued job that its caller still wants (under the lock), or None."""
        while self._queue:
            job = self._queue.popleft()
            if job.future.set_running_or_notify_cancel():
                return job
        return None

    def _run_rescuer(self, lane: _Lane) -> None:
        while (job := self._next_for_rescuer(lane)) is not None:
            cpu = time.thread_time()
            outcome = _run(job)
            self._finish(job, outcome, time.thread_time() - cpu, None)

    def _next_for_rescuer(self, lane: _Lane) -> _Job | None:
        """The job to run next (under the lock), waiting until one is due; None once the idle
        thread has ended or runs at normal priority."""
        with self._cond:
            while not lane.done and lane.idle is not False:
                now = time.monotonic()
                job, wait = self._due(lane, now)
                if job is not None:
                    return job
                if wait is None and lane.idle and lane.current is None:
                    linger = lane.free_since + self.patience() - now
                    wait = linger if linger > 0 else None
                lane.asleep = wait is None
                lane.watch.wait(wait)
                lane.asleep = False
                lane.wakeups += 1
            return None

    def _due(self, lane: _Lane, now: float) -> tuple[_Job | None, float | None]:
        """A job for the rescuer now, or how long to wait before looking again (None: until
        something changes). A lane whose idle thread has not yet said whether it runs at idle
        priority is watched too: it may be starved before it says so."""
        stuck = lane.current
        if stuck is None:
            if not self._queue:
                return None, None
            # The idle thread is free but has not taken the waiting job: starved before it.
            due = max(self._queue[0].queued, lane.free_since) + self.patience()
            if now < due:
                return None, due - now
        elif not stuck.rescued:
            return self._rescue(lane, stuck, now)
        # The idle thread is stuck on a rescued job, or starved while free: serve the queue.
        job = self._take()
        if job is not None:
            job.rescued = True
        return job, None

    def _rescue(self, lane: _Lane, stuck: _Job, now: float) -> tuple[_Job | None, float | None]:
        """``stuck`` (the idle thread's current job) if it is due for a rescue, else how long
        to wait before looking again."""
        due = stuck.started + self.patience()
        if now < due:
            return None, due - now
        if not self._starved(lane, stuck, now):
            return None, self.patience()  # slow but progressing: look again later
        stuck.rescued = True
        self.rescues += 1
        metrics.password_hash_rescued()
        return stuck, None

    def _starved(self, lane: _Lane, job: _Job, now: float) -> bool:
        """True if the idle thread got less than STARVED_SHARE of a core (of its fair share,
        while more idle threads run jobs than there are CPUs) during ``job``, or if its CPU
        clock cannot be read: the wall time then decides alone."""
        if lane.clock is None:
            return True
        try:
            used = time.clock_gettime(lane.clock) - job.cpu_started
        except OSError:
            return True
        # Hashing threads running at once share the CPUs: a fair share is no starvation.
        busy = sum(1 for other in self._lanes if other.current is not None)
        share = STARVED_SHARE * min(1.0, self._cpus / max(1, busy))
        return used < share * (now - job.started)

    def _finish(self, job: _Job, outcome: tuple[bool, Any], cpu: float, lane: _Lane | None) -> None:
        ok, value = outcome
        with self._cond:
            if lane is not None:
                lane.current, lane.free_since = None, time.monotonic()
            first = not job.answered
            job.answered = True
            # A failure's cost (a refused input, say) is no hash's: it must not move the usual.
            if first and ok and self._single_threaded and job.typical:
                self._cost += _SMOOTHING * (cpu - self._cost)
            self._cond.notify_all()
        if first:
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)


def _run(job: _Job) -> tuple[bool, Any]:
    try:
        return True, job.work()
    except BaseException as exc:  # handed to the caller through the future
        return False, exc


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _lower_own_priority() -> bool:
    """Put the calling thread in ``SCHED_IDLE`` (Linux: pid 0 is the calling thread);
    False where the system has no such policy or refuses it."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:
        log.warning("password hashing runs at normal priority: SCHED_IDLE refused (%s)", exc)
        return False
    return True


def _own_cpu_clock() -> int | None:
    """The calling thread's CPU-time clock id (for ``time.clock_gettime`` from another
    thread), or None where there is none."""
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None
