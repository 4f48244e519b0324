"""Processes the benchmark starts: pinned with ``taskset``, logged to a file, measured from
``/proc`` (CPU seconds of a whole process tree, resident memory), stopped by PID."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_SECONDS = 20.0  # SIGTERM, then SIGKILL after this long


class BenchError(RuntimeError):
    """Something the benchmark needs failed: printed as one line, exit status 1."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """``argv`` under ``taskset -c CPUS`` (taskset execs it: the PID stays the program's)."""
    return argv if cpus is None else ["taskset", "-c", cpus, *argv]


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants, from ``/proc/PID/task/TID/children``."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads, live and ended), or of
    its thread ``thread`` alone; 0.0 when it is gone. Resolution: one clock tick (10 ms)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        stat = Path(path).read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of /proc/PID/stat; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes: resident now and its peak; (0, 0) when gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def parse_cpus(cpus: str) -> set[int]:
    """``"0"``, ``"0,1"``, ``"0-3"`` (a taskset list) as a set of CPU numbers."""
    found: set[int] = set()
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def busy_seconds(cpus: set[int]) -> float:
    """CPU seconds that ``cpus`` spent doing anything (all but idle and iowait) since boot,
    from ``/proc/stat``; compared with a process's CPU it shows what else ran there."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values]
            total += sum(ticks[:8]) - ticks[3] - ticks[4]  # user..steal, less idle, iowait
    return total / CLOCK_TICKS


@dataclass
class Proc:
    """A started process; its output goes to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """CPU seconds of the process and every descendant (uvicorn's workers)."""
        return sum(cpu_seconds(pid) for pid in tree_pids(self.pid))

    def workers(self, count: int) -> list[int]:
        """The processes that serve requests: the process itself when it runs one worker
        (uvicorn serves in process), else its children (uvicorn's worker processes)."""
        return [self.pid] if count == 1 else tree_pids(self.pid)[1:]

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"end of {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_SECONDS``; only this PID (uvicorn stops its own
        workers), and only while it is ours (not yet reaped)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            children = tree_pids(self.pid)[1:]
            self.process.kill()
            self.process.wait(timeout=10)
            for child in children:  # a worker left behind by a killed supervisor
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)


@dataclass
class Processes:
    """Every process started through it, stopped in reverse order by ``stop_all``."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str], cpus: str | None, cwd: Path
    ) -> Proc:
        slug = re.sub("[^a-z0-9]+", "-", name.lower()).strip("-")
        log_path = self.workdir / f"{slug}-{len(self.started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                pinned(argv, cpus), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        proc = Proc(name, process, log_path)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started[-1])


def wait_until(ready: Callable[[], bool], proc: Proc, what: str, timeout: float = 90.0) -> None:
    """Poll ``ready()`` every 0.1 s until true (an OSError counts as false), failing with the
    log's tail if ``proc`` exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: {what} within {timeout:g} s; end of log:\n{proc.log_tail()}")


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise BenchError(f"missing tool(s): {', '.join(missing)} (Debian: apt-get install wrk)")
