"""The load generator: Debian's ``wrk`` with a Lua script, pinned to its own CPU.

The script (``LUA`` below, written next to the logs) takes the request from the environment
(method, path, Authorization header, form body), so one script serves ``GET /users/me`` with a
bearer token and a login's form ``POST``; its ``done`` hook prints one JSON line that
``finish`` parses. wrk's own CPU comes from ``wait4``, to show that it is not the bottleneck.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from benchkit.procs import HOST, BenchError, pinned

MARKER = "BENCH-JSON "
TIMEOUT_SECONDS = 30  # a login queued behind a flood can take seconds; none should time out

LUA = r"""-- bench/benchkit/wrk.py: the request comes from the environment, the summary goes out
-- as one JSON line.
wrk.method = os.getenv("BENCH_METHOD")
wrk.path = os.getenv("BENCH_PATH")
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
if authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end
local body = os.getenv("BENCH_BODY") or ""
if body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %.0f, ' ..
    '"p99_us": %.0f, "max_us": %.0f}\n',
    "MARKER", summary.requests, summary.duration, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
""".replace('"MARKER"', json.dumps(MARKER))


@dataclass(frozen=True)
class Request:
    """What every connection sends, back to back."""

    method: str
    path: str
    bearer: str | None = None
    form: tuple[tuple[str, str], ...] = ()

    @classmethod
    def get(cls, path: str, bearer: str) -> Request:
        return cls("GET", path, bearer=bearer)

    @classmethod
    def post_form(cls, path: str, form: dict[str, str]) -> Request:
        return cls("POST", path, form=tuple(form.items()))

    def env(self) -> dict[str, str]:
        return {
            "BENCH_METHOD": self.method,
            "BENCH_PATH": self.path,
            "BENCH_AUTHORIZATION": f"Bearer {self.bearer}" if self.bearer else "",
            "BENCH_BODY": urlencode(self.form) if self.form else "",
        }


@dataclass(frozen=True)
class Load:
    """``connections`` keep-alive connections on one wrk thread, sending ``request``."""

    port: int
    request: Request
    connections: int


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: counts, wall seconds, latency percentiles (ms) and wrk's own CPU."""

    requests: int  # answers received, whatever their status
    failed: int  # status >= 400, socket errors and time-outs
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_seconds: float  # wrk's user + system CPU

    @property
    def ok(self) -> int:
        return self.requests - self.failed

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


@dataclass
class Running:
    load: Load
    process: subprocess.Popen[bytes]
    output: Path


def write_script(directory: Path) -> Path:
    path = directory / "bench.lua"
    path.write_text(LUA)
    return path


def start(load: Load, seconds: int, *, script: Path, cpus: str | None) -> Running:
    """Start wrk for ``seconds`` (whole seconds: wrk's resolution) in the background."""
    output = script.with_name(f"wrk-{time.monotonic_ns()}.out")
    argv = [
        "wrk",
        "-t1",
        f"-c{load.connections}",
        f"-d{seconds}s",
        f"--timeout={TIMEOUT_SECONDS}s",
        "-s",
        str(script),
        f"http://{HOST}:{load.port}{load.request.path}",
    ]
    with output.open("wb") as out:
        process = subprocess.Popen(
            pinned(argv, cpus),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **load.request.env()},
        )
    return Running(load, process, output)


def finish(running: Running) -> WrkResult:
    """Wait for wrk (reaping it with ``wait4`` for its CPU) and parse its JSON line."""
    _pid, status, usage = os.wait4(running.process.pid, 0)
    running.process.returncode = os.waitstatus_to_exitcode(status)
    text = running.output.read_text(errors="replace")
    running.output.unlink(missing_ok=True)
    line = next((ln for ln in text.splitlines() if ln.startswith(MARKER)), None)
    if running.process.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (status {running.process.returncode}): {text[-500:]}")
    data = json.loads(line[len(MARKER) :])
    failed = sum(
        int(data[k])
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return WrkResult(
        requests=int(data["requests"]),
        failed=failed,
        seconds=int(data["duration_us"]) / 1e6,
        p50_ms=float(data["p50_us"]) / 1000,
        p99_ms=float(data["p99_us"]) / 1000,
        max_ms=float(data["max_us"]) / 1000,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


def stop(running: Running) -> None:
    """Kill a wrk that is still running (after an error elsewhere) and reap it."""
    if running.process.returncode is None and running.process.poll() is None:
        running.process.kill()
        running.process.wait(timeout=10)
    running.output.unlink(missing_ok=True)


def version() -> str:
    result = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (result.stdout + result.stderr).splitlines()[0] if result.stdout + result.stderr else ""
    return first.split(" [")[0].removeprefix("wrk ").strip() or "unknown"
