"""The measurements: start a system pinned, load it with wrk, read its CPU from ``/proc``.

CPU per request is the server's process-tree CPU (user + system, every thread, every uvicorn
worker) over the measured window, divided by the successful answers wrk counted in it. The
window is wrk's run: the CPU is read just before wrk starts and just after it exits (a
request in flight at the end costs CPU without being counted: at most ``connections`` of many
thousands). For PostgreSQL the backends serving the database are read the same way and shown
apart; they are not pinned and not in the server's figure.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from benchkit import httpcall, wrk
from benchkit.databases import BackendCPU
from benchkit.procs import (
    BenchError,
    Proc,
    Processes,
    busy_seconds,
    cpu_seconds,
    free_port,
    memory_bytes,
    parse_cpus,
    pinned,
    wait_until,
)
from benchkit.results import Results, percentile
from benchkit.systems import System

MEGABYTE = 1_000_000


@dataclass
class Bench:
    """What every phase needs: where to put things, how long, which CPUs, where figures go."""

    processes: Processes
    workdir: Path
    script: Path  # wrk's Lua script
    server_cpus: str | None  # taskset list for the servers (and the hashing measurement)
    load_cpus: str | None  # taskset list for wrk
    duration: int  # measured seconds per phase
    warmup: int  # unmeasured seconds before each phase
    connections: int  # GET /users/me connections
    login_connections: int
    argon2: tuple[int, int, int]  # authdb's default cost: time, memory KiB, parallelism
    results: Results
    say: Callable[[str], None]


@dataclass
class Server:
    system: System
    proc: Proc
    port: int
    token: str
    backends: BackendCPU | None


@dataclass(frozen=True)
class Window:
    """One measured phase: wrk's results (one per load), the server's and PostgreSQL's CPU
    seconds, and the CPU seconds anything else used on the server's CPUs meanwhile."""

    runs: list[wrk.WrkResult]
    server_cpu: float
    loop_cpu: float  # the serving process's main thread (the event loop); NaN with workers
    pg_cpu: float | None
    others_cpu: float
    seconds: float

    def cores(self, cpu: float) -> float:
        return cpu / self.seconds


def start_server(bench: Bench, system: System, *, name: str | None = None) -> Server:
    port = free_port()
    proc = bench.processes.start(
        name or system.label,
        system.argv(port),
        env=system.env,
        cpus=system.cpus or bench.server_cpus,
        cwd=bench.workdir,
    )
    wait_until(lambda: httpcall.healthy(port), proc, "did not answer /healthz")
    token = system.token(port)
    answer = httpcall.call(port, "GET", system.me_path, bearer=token)
    httpcall.expect(answer, 200, f"{system.label}: GET {system.me_path}")
    backends = BackendCPU(system.url) if system.postgres and system.url else None
    return Server(system, proc, port, token, backends)


def me_load(bench: Bench, server: Server) -> wrk.Load:
    request = wrk.Request.get(server.system.me_path, server.token)
    return wrk.Load(server.port, request, bench.connections)


def login_load(bench: Bench, server: Server, *, other: bool = False) -> wrk.Load:
    login = server.system.other_login if other else server.system.login
    login = login or server.system.login
    if login is None:
        raise BenchError(f"{server.system.label} has no login")
    return wrk.Load(
        server.port, wrk.Request.post_form(login.path, login.form), bench.login_connections
    )


def run_loads(bench: Bench, loads: list[wrk.Load], seconds: int) -> list[wrk.WrkResult]:
    running: list[wrk.Running] = []
    try:
        for load in loads:
            running.append(wrk.start(load, seconds, script=bench.script, cpus=bench.load_cpus))
        return [wrk.finish(r) for r in running]
    finally:
        for r in running:
            wrk.stop(r)


def measure(bench: Bench, server: Server, loads: list[wrk.Load]) -> Window:
    """Warm up, then one measured run of all ``loads`` at once."""
    if bench.warmup:
        run_loads(bench, loads, bench.warmup)
    cpus = parse_cpus(server.system.cpus or bench.server_cpus or "0")
    wrk_there = bool(cpus & parse_cpus(bench.load_cpus or "0"))
    pg_before = server.backends.sample() if server.backends else None
    single = server.system.workers == 1
    loop_before = cpu_seconds(server.proc.pid, server.proc.pid) if single else math.nan
    cpu_before, busy_before = server.proc.cpu_seconds(), busy_seconds(cpus)
    started = time.monotonic()
    runs = run_loads(bench, loads, bench.duration)
    seconds = time.monotonic() - started
    server_cpu = server.proc.cpu_seconds() - cpu_before
    loop_cpu = cpu_seconds(server.proc.pid, server.proc.pid) - loop_before if single else math.nan
    others = busy_seconds(cpus) - busy_before - server_cpu
    if wrk_there:
        others -= sum(run.cpu_seconds for run in runs)
    pg_cpu = None
    if server.backends and pg_before is not None:
        pg_cpu = BackendCPU.used(pg_before, server.backends.sample())
    server.proc.check_alive()
    return Window(runs, server_cpu, loop_cpu, pg_cpu, max(0.0, others), seconds)


def per(total: float | None, count: int, unit: float) -> float:
    """``total`` seconds per ``count``, in ``unit`` (1e6: µs, 1e3: ms); NaN when undefined."""
    return math.nan if total is None or count <= 0 else total / count * unit


def users_me(bench: Bench, server: Server, round_: int) -> None:
    window = measure(bench, server, [me_load(bench, server)])
    (run,) = window.runs
    row, add = server.system.key, bench.results.add
    cpu_us = per(window.server_cpu, run.ok, 1e6)
    add(row, "me_rate", round_, run.rate)
    add(row, "me_cpu_us", round_, cpu_us)
    add(row, "me_pg_us", round_, per(window.pg_cpu, run.ok, 1e6))
    add(row, "me_p99", round_, run.p99_ms)
    add(row, "me_cores", round_, window.cores(window.server_cpu))
    add(row, "me_others", round_, window.cores(window.others_cpu))
    add(row, "me_wrk_cores", round_, window.cores(run.cpu_seconds))
    add(row, "me_failed", round_, run.failed)
    bench.say(
        f"    GET {server.system.me_path}: {run.rate:.0f} req/s, {cpu_us:.0f} µs CPU/req, "
        f"p99 {run.p99_ms:.1f} ms; cores: server {window.cores(window.server_cpu):.2f}, "
        f"others there {window.cores(window.others_cpu):.2f}, wrk "
        f"{window.cores(run.cpu_seconds):.2f}" + failures(run.failed)
    )


def logins(bench: Bench, server: Server, round_: int) -> None:
    """Correct-password logins alone, with the cost of one hash measured just before and
    just after on the same CPU (the hashing limit of this phase)."""
    verifies = hash_costs(bench, 8)
    window = measure(bench, server, [login_load(bench, server)])
    verifies += hash_costs(bench, 8)
    (run,) = window.runs
    row, add = server.system.key, bench.results.add
    cpu_ms = per(window.server_cpu, run.ok, 1e3)
    verify_ms = statistics.median(verifies) * 1e3
    add(row, "login_rate", round_, run.rate)
    add(row, "login_cpu_ms", round_, cpu_ms)
    loop_ms = per(window.loop_cpu, run.ok, 1e3)
    add(row, "login_loop_ms", round_, loop_ms)
    add(row, "login_pg_ms", round_, per(window.pg_cpu, run.ok, 1e3))
    add(row, "login_p99", round_, run.p99_ms)
    add(row, "login_cores", round_, window.cores(window.server_cpu))
    add(row, "login_others", round_, window.cores(window.others_cpu))
    add(row, "login_failed", round_, run.failed)
    add(row, "verify_ms", round_, verify_ms)
    bench.results.extend("argon2", "verify_ms", [v * 1e3 for v in verifies])
    bench.say(
        f"    logins: {run.rate:.1f}/s, {cpu_ms:.1f} ms CPU each ({loop_ms:.1f} on the loop; "
        f"one verify {verify_ms:.1f} ms: limit {1e3 / verify_ms:.1f}/s), p99 {run.p99_ms:.0f} "
        f"ms; cores: server {window.cores(window.server_cpu):.2f}, others there "
        f"{window.cores(window.others_cpu):.2f}" + failures(run.failed)
    )


def mixed(bench: Bench, server: Server, round_: int) -> None:
    """``GET /users/me`` flood and another user's logins at once."""
    window = measure(bench, server, [me_load(bench, server), login_load(bench, server, other=True)])
    me, login = window.runs
    row, add = server.system.key, bench.results.add
    add(row, "mix_me_rate", round_, me.rate)
    add(row, "mix_me_p99", round_, me.p99_ms)
    add(row, "mix_login_rate", round_, login.rate)
    add(row, "mix_login_p99", round_, login.p99_ms)
    add(row, "mix_others", round_, window.cores(window.others_cpu))
    # Where the core went: the loop's share, and the rest (hashing, the writer) per login;
    # beside the logins phase's "threads ms", the second shows what the flood adds to a hash.
    add(row, "mix_loop_share", round_, window.cores(window.loop_cpu))
    add(row, "mix_threads_ms", round_, per(window.server_cpu - window.loop_cpu, login.ok, 1e3))
    add(row, "mix_failed", round_, me.failed + login.failed)
    bench.say(
        f"    flood + logins: {me.rate:.0f} req/s (p99 {me.p99_ms:.1f} ms) and "
        f"{login.rate:.1f} logins/s (p99 {login.p99_ms:.0f} ms); the loop's share "
        f"{window.cores(window.loop_cpu):.0%}" + failures(me.failed + login.failed)
    )


# A light client: one keep-alive connection, GET at a fixed rate whatever the answers' delay
# (open loop), each answer's latency printed; run in its own process on the load CPU.
PROBE_CODE = r"""
import socket, sys, time
port, path, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
seconds, rate = float(sys.argv[4]), float(sys.argv[5])
conn = socket.create_connection(("127.0.0.1", port))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
end = time.monotonic() + seconds
due = time.monotonic()
while time.monotonic() < end:
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    due += 1 / rate
    started = time.perf_counter()
    conn.sendall(request)
    data = b""
    while True:
        data += conn.recv(65536)
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            if len(body) >= length:
                break
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    print(time.perf_counter() - started)
"""
PROBE_RATE = 200  # GET /users/me per second: about a twentieth of what one worker serves
STORM_FACTOR = 4  # the login storm: this many times the login connections


def start_probe(bench: Bench, server: Server, seconds: int) -> subprocess.Popen[str]:
    argv = [
        sys.executable, "-c", PROBE_CODE, str(server.port), server.system.me_path,
        server.token, str(seconds), str(PROBE_RATE),
    ]  # fmt: skip
    return subprocess.Popen(pinned(argv, bench.load_cpus), stdout=subprocess.PIPE, text=True)


def probe_latencies(process: subprocess.Popen[str]) -> list[float]:
    """The probe's latencies in ms, once it ends."""
    out, _ = process.communicate(timeout=300)
    if process.returncode != 0:
        raise BenchError(f"the /users/me probe failed with status {process.returncode}")
    return [float(line) * 1e3 for line in out.split()]


def storm(bench: Bench, server: Server, round_: int) -> None:
    """A light ``GET /users/me`` client (one connection, ``PROBE_RATE``/s, open loop) alone,
    then during a login storm of ``STORM_FACTOR`` times the login connections: its p99 shows
    the latency an application's other requests see, not a closed-loop flood's share."""
    alone = probe_latencies(start_probe(bench, server, bench.duration))
    storm_load = login_load(bench, server)
    loads = [replace(storm_load, connections=storm_load.connections * STORM_FACTOR)]
    if bench.warmup:
        run_loads(bench, loads, bench.warmup)
    probe = start_probe(bench, server, bench.duration)
    (logins,) = run_loads(bench, loads, bench.duration)
    during = probe_latencies(probe)
    p99_alone, p99_during = percentile(alone, 0.99), percentile(during, 0.99)
    row, add = server.system.key, bench.results.add
    add(row, "probe_p50", round_, percentile(alone, 0.5))
    add(row, "probe_p99", round_, p99_alone)
    add(row, "storm_probe_p50", round_, percentile(during, 0.5))
    add(row, "storm_probe_p99", round_, p99_during)
    add(row, "storm_login_rate", round_, logins.rate)
    bench.say(
        f"    light client alone: p99 {p99_alone:.2f} ms; during {logins.rate:.1f} logins/s: "
        f"p99 {p99_during:.2f} ms" + failures(logins.failed)
    )


def failures(count: int) -> str:
    return f", {count} FAILED" if count else ""


PHASES: dict[str, Callable[[Bench, Server, int], None]] = {
    "users_me": users_me,
    "logins": logins,
    "mixed": mixed,
    "storm": storm,
}


def block(bench: Bench, system: System, phases: list[str], round_: int) -> None:
    """Start ``system``, run ``phases`` on it in order, stop it."""
    bench.say(f"  {system.label}")
    server = start_server(bench, system)
    try:
        for phase in phases:
            PHASES[phase](bench, server, round_)
    finally:
        bench.processes.stop(server.proc)


# --------------------------------------------------------------------------------------------
# The hashing limit
# --------------------------------------------------------------------------------------------

HASH_CODE = """
import sys, time
from pwdlib.hashers.argon2 import Argon2Hasher
t, m, p, n = (int(a) for a in sys.argv[1:5])
hasher = Argon2Hasher(time_cost=t, memory_cost=m, parallelism=p)
password = "bench-password-of-some-length"
stored = hasher.hash(password)
for i in range(n + 1):
    started = time.thread_time()
    assert hasher.verify(password, stored)
    if i:
        print(time.thread_time() - started)
"""


def hash_costs(bench: Bench, verifies: int) -> list[float]:
    """CPU seconds of each of ``verifies`` argon2id verifies (pwdlib over argon2-cffi, at
    ``bench.argon2``'s cost) after an unmeasured one, in a process pinned like the servers."""
    argv = [sys.executable, "-c", HASH_CODE, *(str(a) for a in bench.argon2), str(verifies)]
    result = subprocess.run(
        pinned(argv, bench.server_cpus), capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"argon2 measurement failed: {result.stderr.strip()[-300:]}")
    return [float(line) for line in result.stdout.split()]


# --------------------------------------------------------------------------------------------
# Memory after many requests
# --------------------------------------------------------------------------------------------


def rss(bench: Bench, system: System, requests: int) -> None:
    """Resident memory of each worker before and after ``requests`` ``GET /users/me``."""
    bench.say(f"  {system.label}: {requests} GET /users/me")
    server = start_server(bench, system)
    try:
        run_loads(bench, [me_load(bench, server)], max(1, bench.warmup))
        workers = server.proc.workers(system.workers)
        before = max(memory_bytes(pid)[0] for pid in workers)
        done, chunk = 0, 5
        while done < requests:
            # A fresh token per run of at most a minute: a slow machine must not outlive one.
            server.token = system.token(server.port)
            (run,) = run_loads(bench, [me_load(bench, server)], chunk)
            if run.failed:
                raise BenchError(f"{system.label}: {run.failed} requests failed in the RSS phase")
            done += run.ok
            chunk = max(1, min(60, math.ceil((requests - done) / max(run.rate, 1.0))))
            now = max(memory_bytes(pid)[0] for pid in workers) / MEGABYTE
            bench.say(f"    {done} requests, RSS {now:.1f} MB")
        server.proc.check_alive()
        after = [memory_bytes(pid) for pid in workers]
        row, add = system.key, bench.results.add
        add(row, "rss_before_mb", 1, before / MEGABYTE)
        add(row, "rss_after_mb", 1, max(a[0] for a in after) / MEGABYTE)
        add(row, "rss_peak_mb", 1, max(a[1] for a in after) / MEGABYTE)
        add(row, "rss_requests", 1, done)
    finally:
        bench.processes.stop(server.proc)


# --------------------------------------------------------------------------------------------
# Revocation delay across processes
# --------------------------------------------------------------------------------------------

POLL_LIMIT_SECONDS = 5.0


def revocation(bench: Bench, system: System, trials: int) -> None:
    """Two processes A and B on one database: log in through A, use the token on B, revoke
    it through A, then poll B back to back until it answers 401. The delay runs from A's
    answer to the revocation to B's first 401 (so it includes one poll's round trip)."""
    bench.say(f"  {system.label}: {trials} revocations in A, polled in B")
    a = start_server(bench, system, name=f"{system.label} A")
    b = start_server(bench, system, name=f"{system.label} B")
    login = system.login
    assert login is not None
    to_a, to_b = httpcall.Client(a.port), httpcall.Client(b.port)
    delays: list[float] = []
    stale: list[float] = []
    try:
        for _ in range(trials):
            tokens = httpcall.expect(
                to_a.call("POST", login.path, form=login.form), 200, "login through A"
            ).json()
            access, refresh = tokens["access_token"], tokens["refresh_token"]
            for _warm in range(3):
                httpcall.expect(to_b.call("GET", "/users/me", bearer=access), 200, "B before")
            httpcall.expect(
                to_a.call("POST", "/revoke", form={"token": refresh}), 200, "revoke through A"
            )
            revoked = time.perf_counter()
            polls = 0
            while True:
                answer = to_b.call("GET", "/users/me", bearer=access)
                now = time.perf_counter()
                if answer.status == 401:
                    break
                httpcall.expect(answer, 200, "B after the revocation")
                polls += 1
                if now - revoked > POLL_LIMIT_SECONDS:
                    break
            delays.append((now - revoked) * 1e3)
            stale.append(polls)
            time.sleep(0.02)
        a.proc.check_alive()
        b.proc.check_alive()
    finally:
        to_a.close()
        to_b.close()
        for server in (b, a):
            with contextlib.suppress(Exception):
                bench.processes.stop(server.proc)
    bench.results.extend(system.key, "revocation_ms", delays)
    bench.results.extend(system.key, "revocation_stale", stale)
    bench.say(
        f"    delay median {percentile(delays, 0.5):.1f} ms, p95 {percentile(delays, 0.95):.1f}"
        f" ms, max {max(delays):.1f} ms; answers still 200 after the revocation: "
        f"max {max(stale):.0f}"
    )
