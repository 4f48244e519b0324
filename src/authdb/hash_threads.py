"""Threads for password hashing that give way to the rest of the process.

A hash is tens of milliseconds of CPU that only its own sign-in waits for. Run at the operating
system's idle priority (Linux ``SCHED_IDLE``, sched(7)), a hashing thread is preempted as soon
as the event loop, or anything else on the machine, wants the core: an application's other
requests are answered as quickly during a login storm as without one.

Idle priority alone would starve sign-ins while the core is saturated by other work. So each
idle thread has a *rescuer* at normal priority. When the idle thread's current job has run
longer than ``PATIENCE`` times the usual CPU cost of a job (wall time), the rescuer runs it
again (jobs are pure functions of their arguments) and answers it; then it takes further queued
jobs while the idle thread stays stuck. The first run to finish answers; the other's result is
dropped. Under saturation sign-ins thus get the share of the core a normal thread gets, later
by at most the patience.

Where ``SCHED_IDLE`` cannot be set (not Linux, or refused), the thread runs at normal priority
and its rescuer never steps in.
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
from typing import Any, Literal

from authdb import metrics

log = logging.getLogger("authdb.passwords")

Priority = Literal["idle", "normal"]
# A job overdue by this many times the usual CPU cost of a job is rescued.
PATIENCE = 3.0
# Never rescue sooner: a cheap job (the tests' hashes) is late by scheduling noise alone.
MIN_PATIENCE_SECONDS = 0.02
# The cost assumed before a job has been measured: the default argon2id on a slow core.
_FIRST_COST_SECONDS = 0.05
_SMOOTHING = 0.2  # weight of the newest measurement in the moving average of the cost


@dataclass(eq=False)
class _Job:
    work: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)
    started: float = 0.0  # time.monotonic() when the idle thread began it
    rescued: bool = False  # a rescuer runs it (again), or took it from the queue
    answered: bool = False


@dataclass(eq=False)
class _Lane:
    """One idle thread and its rescuer."""

    current: _Job | None = None  # the job the idle thread is running
    idle: bool | None = None  # SCHED_IDLE was set on the thread (None: not tried yet)
    done: bool = False  # the idle thread has ended


class HashThreads:
    """``count`` hashing threads at ``priority`` (``"idle"``: each with a rescuer, see the
    module's docstring), sharing one queue of jobs.

    ``submit`` returns a ``concurrent.futures.Future``; cancelling it before a thread starts it
    drops the job. Threads start at the first ``submit``; ``shutdown`` ends them once the queue
    is empty, without waiting.
    """

    def __init__(self, count: int, priority: Priority = "idle", name: str = "authdb-hash") -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._count, self._priority, self.name = count, priority, name
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._lanes: list[_Lane] = []
        self._cost = _FIRST_COST_SECONDS
        self._closed = False
        # Jobs run again by a rescuer so far: lets tests see the mechanism without timing it.
        self.rescues = 0

    def submit(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``work(*args)``; its future gets the return value or the exception raised.

        Raises RuntimeError after ``shutdown``.
        """
        job = _Job(lambda: work(*args))
        with self._cond:
            if self._closed:
                raise RuntimeError("the hashing threads are shut down")
            if not self._lanes:
                self._start()
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def shutdown(self) -> None:
        """End the threads once the queued jobs are done (without waiting for them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def patience(self) -> float:
        """Seconds of wall time an idle thread's job may take before it is rescued."""
        return max(PATIENCE * self._cost, MIN_PATIENCE_SECONDS)

    def _start(self) -> None:
        for index in range(self._count):
            lane = _Lane()
            self._lanes.append(lane)
            self._thread(self._run_idle, lane, f"{self.name}-{index}")
            if self._priority == "idle":
                self._thread(self._run_rescuer, lane, f"{self.name}-{index}-rescue")

    @staticmethod
    def _thread(target: Callable[[_Lane], None], lane: _Lane, name: str) -> None:
        # A daemon: a hash still queued must not hold the interpreter open at exit.
        threading.Thread(target=target, args=(lane,), name=name, daemon=True).start()

    def _run_idle(self, lane: _Lane) -> None:
        if self._priority == "idle":
            idle = _lower_own_priority()
            with self._cond:
                lane.idle = idle
                self._cond.notify_all()  # a rescuer with nothing to watch for ends
        try:
            while (job := self._next_for_idle(lane)) is not None:
                cpu = time.thread_time()
                outcome = _run(job)
                self._finish(job, outcome, time.thread_time() - cpu, lane)
        finally:
            with self._cond:
                lane.done = True
                self._cond.notify_all()

    def _next_for_idle(self, lane: _Lane) -> _Job | None:
        with self._cond:
            while True:
                job = self._take()
                if job is not None:
                    job.started = time.monotonic()
                    lane.current = job
                    self._cond.notify_all()  # the rescuer times it from now
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
        with self._cond:
            while not lane.done and lane.idle is not False:
                stuck = lane.current
                if stuck is not None and not stuck.rescued and lane.idle:
                    overdue = stuck.started + self.patience() - time.monotonic()
                    if overdue <= 0:
                        stuck.rescued = True
                        self.rescues += 1
                        metrics.password_hash_rescued()
                        return stuck
                    self._cond.wait(overdue)
                    continue
                if stuck is not None and stuck.rescued:
                    job = self._take()  # the idle thread is still stuck: serve the queue
                    if job is not None:
                        job.rescued = True
                        return job
                self._cond.wait()
            return None

    def _finish(self, job: _Job, outcome: tuple[bool, Any], cpu: float, lane: _Lane | None) -> None:
        with self._cond:
            if lane is not None:
                lane.current = None
            first = not job.answered
            job.answered = True
            if first:
                self._cost += _SMOOTHING * (cpu - self._cost)
            self._cond.notify_all()
        if first:
            ok, value = outcome
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)


def _run(job: _Job) -> tuple[bool, Any]:
    try:
        return True, job.work()
    except BaseException as exc:  # handed to the caller through the future
        return False, exc


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
