"""Benchmark ``GET /users/me`` of ``authdb serve`` against a bare FastAPI app that decodes a JWT.

Starts real processes on 127.0.0.1 (``authdb serve``, the bare app of ``bare_app.py`` and, as a
variant, authdb serve with its access log on), creates a user, logs in, and
drives each server with a keep-alive HTTP/1.1 load generator for a fixed time. It prints
requests/s, p50 and p99 side by side, then ``/users/me`` while a login storm (concurrent correct
``POST /token``) runs, and checks the two targets:

* authdb ``/users/me`` throughput is at least 50% of the bare app's;
* authdb ``/users/me`` p99 during the login storm is at most 3x its idle p99.

authdb's figure includes everything a real request does: JWT verification AND the per-request
session check (one indexed join of sessions and users), plus the response model.

Usage::

    python bench/bench_users_me.py [--duration 10] [--concurrency 32] [--workers 1]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/]

With a PostgreSQL URL a throwaway database ``authdb_bench_<random>`` is created on that server
(via the URL's database, default ``postgres``), migrated with ``authdb migrate`` and dropped after.
Every process the script starts is stopped by its PID when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx

BENCH_DIR = Path(__file__).resolve().parent
AUTHDB = str(Path(sys.executable).with_name("authdb"))
HOST = "127.0.0.1"
USERNAME = "bench"
EMAIL = "bench@example.com"
T = TypeVar("T")
REQUEST_TIMEOUT = 30.0  # a phase gives up on requests this much past its end


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any AUTHDB_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHDB_")}
    env.update(extra)
    return env


@dataclasses.dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User+system CPU of the server and all its descendants (uvicorn workers)."""
        return sum(_cpu_seconds(pid) for pid in _process_tree(self.process.pid))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of /proc/PID/stat; [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen(port: int) -> list[str]:
    return ["--host", HOST, "--port", str(port)]


def start_server(name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int) -> Server:
    log_path = cwd / f"{re.sub('[^a-z0-9]+', '-', name.lower())}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Server(name, port, process, log_path)


def wait_healthy(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.base}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not become healthy:\n{server.log_tail()}")


def run_authdb(args: list[str], env: dict[str, str], cwd: Path, stdin: str | None = None) -> str:
    result = subprocess.run(
        [AUTHDB, *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"authdb {args[0]} failed: {result.stderr.strip() or result.stdout}")
    return result.stdout.strip()


# --------------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------------


class ThrowawayPostgres:
    """A database ``authdb_bench_<random>`` on the server of ``url``, dropped on exit."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
        self.name = f"authdb_bench_{secrets.token_hex(6)}"
        admin = parsed.set(drivername="postgresql", database=parsed.database or "postgres")
        self.admin_dsn = admin.render_as_string(hide_password=False)
        self.url = parsed.set(drivername="postgresql+asyncpg", database=self.name).render_as_string(
            hide_password=False
        )

    async def _execute(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self) -> None:
        asyncio.run(self._execute(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


# --------------------------------------------------------------------------------------------
# Load generator: a minimal keep-alive HTTP/1.1 client (httpx costs more CPU per request than
# the bare app under test, which would make the baseline client-bound).
# --------------------------------------------------------------------------------------------


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.body = b""  # the last response's body

    async def request(self, raw: bytes) -> int:
        """Send one request; returns the status once the whole response has been read."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            keep_alive = True
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    raise RuntimeError("chunked responses are not supported by the bench client")
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep_alive = False
            self.body = await self.reader.readexactly(length) if length else b""
        except BaseException:
            self.close()
            raise
        if not keep_alive:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclasses.dataclass
class Load:
    """``concurrency`` clients sending ``raw`` to ``port`` back to back."""

    label: str
    port: int
    raw: bytes
    concurrency: int
    max_requests: int = 10_000_000  # per client
    # For a request that can be sent only once (a refresh grant spends its token): called with
    # each 200's body, returns the next request, which also replaces ``raw`` for later phases.
    # Give such a load concurrency 1.
    advance: Callable[[bytes], bytes] | None = None


@dataclasses.dataclass
class Result:
    label: str
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    errors: int
    in_time: int = 0  # 200s that completed before the phase ended: the throughput
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rps(self) -> float:
        return self.in_time / self.seconds

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of successful requests, in milliseconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    @property
    def failures(self) -> int:
        return self.errors + sum(n for status, n in self.statuses.items() if status != 200)


async def _client(load: Load, start: float, end: float, result: Result, record: bool) -> None:
    conn = Connection(load.port)
    try:
        # Connect before the clock starts, with a cheap request (a login would take seconds).
        await conn.request(health_request(load.port))
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        sent = 0
        while sent < load.max_requests:
            begun = time.perf_counter()
            if begun >= end:
                break
            sent += 1
            try:
                status = await conn.request(load.raw)
                if status == 200 and load.advance is not None:
                    load.raw = load.advance(conn.body)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                result.errors += 1
                await asyncio.sleep(0.01)
                continue
            if record:
                result.statuses[status] += 1
                if status == 200:
                    finished = time.perf_counter()
                    result.latencies.append(finished - begun)
                    result.in_time += finished <= end
    finally:
        conn.close()


async def run_phase(
    loads: list[Load],
    duration: float,
    servers: list[Server],
    *,
    record: bool = True,
) -> list[Result]:
    """Run every load at once for ``duration`` seconds; one Result per load."""
    results = [Result(load.label, duration, [], Counter(), 0) for load in loads]
    start = time.perf_counter() + 0.5  # time to open all connections
    end = start + duration
    owners = {
        asyncio.create_task(_client(load, start, end, result, record)): result
        for load, result in zip(loads, results, strict=True)
        for _ in range(load.concurrency)
    }
    tasks = list(owners)
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    server_cpu_before = sum(s.cpu_seconds() for s in servers)
    client_cpu_before = time.process_time()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    server_cpu = sum(s.cpu_seconds() for s in servers) - server_cpu_before
    client_cpu = time.process_time() - client_cpu_before
    _done, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT)
    for task in pending:
        task.cancel()
        owners[task].errors += 1  # a request still unanswered REQUEST_TIMEOUT after the end
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    for result in results:
        result.server_cpu = server_cpu / duration
        result.client_cpu = client_cpu / duration
    return results


def get_request(port: int, path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: authdb-bench\r\n"
        f"Accept: application/json\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


def health_request(port: int) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()


def login_request(port: int, password: str) -> bytes:
    return token_request(port, {"username": USERNAME, "password": password}, "authdb-bench-storm")


def refresh_request(port: int, refresh_token: str) -> bytes:
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return token_request(port, fields, "authdb-bench-refresh")


def token_request(port: int, fields: dict[str, str], user_agent: str) -> bytes:
    """``POST /token`` with ``fields`` as its form body."""
    body = urlencode(fields).encode()
    head = (
        f"POST /token HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: {user_agent}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def machine_description() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({model or 'unknown'}), "
        f"Python {platform.python_version()}, load average before the run {load}"
    )


@dataclasses.dataclass
class Figures:
    bare: Result
    idle: Result
    storm: Result
    logins: Result
    variant: Result | None


async def measure(
    args: argparse.Namespace,
    bare: Server,
    authdb: Server,
    variant: Server | None,
    token: str,
    password: str,
) -> Figures:
    n = args.concurrency

    def me(server: Server, label: str) -> Load:
        return Load(label, server.port, get_request(server.port, "/users/me", token), n)

    async def phase(label: str, loads: list[Load], servers: list[Server]) -> list[Result]:
        print(f"  {label}: warming up {args.warmup:g} s, measuring {args.duration:g} s", flush=True)
        if args.warmup > 0:
            await run_phase(loads, args.warmup, servers, record=False)
        return await run_phase(loads, args.duration, servers)

    (bare_r,) = await phase("bare app", [me(bare, "bare FastAPI app, JWT decode only")], [bare])
    (idle_r,) = await phase("authdb idle", [me(authdb, "authdb /users/me, idle")], [authdb])
    storm = Load(
        f"  POST /token storm, {args.storm_concurrency} clients",
        authdb.port,
        login_request(authdb.port, password),
        args.storm_concurrency,
        max_requests=math.ceil(args.storm_max_logins / args.storm_concurrency),
    )
    print(
        f"  authdb + login storm: measuring {args.duration:g} s "
        f"(at most {args.storm_max_logins} logins)",
        flush=True,
    )
    storm_r, logins_r = await run_phase(
        [me(authdb, "authdb /users/me, login storm"), storm], args.duration, [authdb]
    )
    variant_r = None
    if variant is not None:
        (variant_r,) = await phase(
            "variant", [me(variant, "authdb serve --access-log, idle")], [variant]
        )
    return Figures(bare_r, idle_r, storm_r, logins_r, variant_r)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _rows(figures: Figures) -> list[Result]:
    rows = [figures.bare, figures.idle, figures.storm, figures.logins]
    return rows if figures.variant is None else [*rows, figures.variant]


def _targets(figures: Figures) -> tuple[float, float]:
    """(authdb req/s over bare req/s, storm p99 over idle p99) for one round."""
    throughput = figures.idle.rps / figures.bare.rps if figures.bare.rps else 0.0
    idle_p99 = figures.idle.percentile(0.99)
    slowdown = figures.storm.percentile(0.99) / idle_p99 if idle_p99 else math.inf
    return throughput, slowdown


def report(
    rounds: list[Figures], args: argparse.Namespace, backend: str, started: datetime, machine: str
) -> bool:
    print()
    print(
        f"authdb GET /users/me benchmark, {started:%Y-%m-%d %H:%M} UTC; {backend}, "
        f"--workers {args.workers} for every server; {args.concurrency} keep-alive connections, "
        f"{args.duration:g} s per phase"
    )
    print(machine)
    header = (
        f"{'':40} {'ok':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'fail':>5} {'srv CPU':>8} {'gen CPU':>8}"
    )
    print(header)
    for number, figures in enumerate(rounds, 1):
        print("-" * len(header) if len(rounds) == 1 else f"--- round {number} of {len(rounds)}")
        for r in _rows(figures):
            worst = max(r.latencies) * 1000 if r.latencies else math.nan
            print(
                f"{r.label:40} {r.ok:>7} {r.rps:>8.0f} {r.percentile(0.50):>8.2f} "
                f"{r.percentile(0.99):>8.2f} {worst:>8.1f} {r.failures:>5} "
                f"{r.server_cpu:>8.2f} {r.client_cpu:>8.2f}"
            )
            if set(r.statuses) - {200}:
                print(f"    non-200 answers: {dict(r.statuses)}")
    print("(srv CPU / gen CPU: cores used by the server process tree / by this load generator)")
    throughputs, slowdowns = zip(*(_targets(f) for f in rounds), strict=True)
    throughput, slowdown = statistics.median(throughputs), statistics.median(slowdowns)
    ok_throughput, ok_storm = throughput >= 0.5, slowdown <= 3.0
    last = rounds[-1]
    print()
    if len(rounds) == 1:
        print(
            f"target 1: authdb req/s >= 50% of bare's:  {last.idle.rps:.0f} / "
            f"{last.bare.rps:.0f} = {throughput:.0%}   {verdict(ok_throughput)}"
        )
        print(
            f"target 2: storm p99 <= 3x idle p99:       {last.storm.percentile(0.99):.2f} / "
            f"{last.idle.percentile(0.99):.2f} ms = {slowdown:.2f}x   {verdict(ok_storm)}"
        )
    else:
        each = ", ".join(f"{t:.0%}" for t in throughputs)
        print(
            f"target 1: authdb req/s >= 50% of bare's:  median {throughput:.0%} "
            f"(rounds: {each})   {verdict(ok_throughput)}"
        )
        each = ", ".join(f"{s:.2f}x" for s in slowdowns)
        print(
            f"target 2: storm p99 <= 3x idle p99:       median {slowdown:.2f}x "
            f"(rounds: {each})   {verdict(ok_storm)}"
        )
    if max(r.client_cpu for f in rounds for r in _rows(f)) > 0.9:
        print(
            "note: the load generator used a whole core in some phase; on a small machine it "
            "competes with the servers, so absolute figures are pessimistic."
        )
    return ok_throughput and ok_storm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GET /users/me: authdb serve vs a bare FastAPI JWT app, idle and under a "
        "login storm.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of each server (authdb serve --workers)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every phase this many times; targets use medians"
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server to benchmark on, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/"
        " (a throwaway database is created on it and dropped); default: a temporary SQLite file",
    )
    parser.add_argument("--storm-concurrency", type=int, default=8, help="login storm clients")
    parser.add_argument(
        "--storm-max-logins", type=int, default=10_000, help="cap on the storm's logins"
    )
    parser.add_argument(
        "--no-variant",
        action="store_true",
        help="skip the variant (authdb serve with its access log on)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if min(args.duration, args.concurrency, args.workers, args.repeat) <= 0 or args.warmup < 0:
        parser.error("--duration, --concurrency, --workers and --repeat must be positive")
    return args


@contextlib.contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authdb-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    machine = machine_description()
    servers: list[Server] = []
    postgres: ThrowawayPostgres | None = None
    with work_directory(args.keep) as workdir:
        try:
            if args.database_url and not args.database_url.startswith("sqlite"):
                postgres = ThrowawayPostgres(args.database_url)
                postgres.create()
                database_url = postgres.url
                backend = f"PostgreSQL (throwaway database {postgres.name})"
            else:
                database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
                backend = "SQLite (aiosqlite, WAL)"
            env = clean_env(
                {
                    "AUTHDB_DATABASE_URL": database_url,
                    "AUTHDB_SECRET_KEY": secrets.token_urlsafe(48),
                    "PYTHONUNBUFFERED": "1",
                }
            )
            if postgres is not None:
                run_authdb(["migrate"], env, workdir)
            password = f"bench-{secrets.token_urlsafe(18)}"
            run_authdb(
                ["createuser", "--username", USERNAME, "--email", EMAIL, "--password-stdin"],
                env,
                workdir,
                stdin=password + "\n",
            )
            uvicorn = [sys.executable, "-m", "uvicorn", "--log-level", "warning", "--no-access-log"]
            workers = ["--workers", str(args.workers)]
            authdb_port = free_port()
            authdb = start_server(
                "authdb serve",
                [AUTHDB, "serve", *listen(authdb_port), *workers],
                env,
                workdir,
                authdb_port,
            )
            servers.append(authdb)
            bare_port = free_port()
            bare = start_server(
                "bare app",
                [
                    *uvicorn,
                    "--app-dir",
                    str(BENCH_DIR),
                    "bare_app:app",
                    *workers,
                    *listen(bare_port),
                ],
                env,
                workdir,
                bare_port,
            )
            servers.append(bare)
            variant = None
            if not args.no_variant:
                variant_port = free_port()
                variant = start_server(
                    "authdb serve --access-log",
                    [AUTHDB, "serve", "--access-log", *listen(variant_port), *workers],
                    env,
                    workdir,
                    variant_port,
                )
                servers.append(variant)
            for server in servers:
                wait_healthy(server)
                print(f"{server.name}: pid {server.process.pid}, {server.base}", flush=True)
            token = login(authdb, password)
            for server in servers:
                check_me(server, token)
            rounds = []
            for number in range(1, args.repeat + 1):
                if args.repeat > 1:
                    print(f"round {number} of {args.repeat}", flush=True)
                rounds.append(run_async(measure(args, bare, authdb, variant, token, password)))
            ok = report(rounds, args, backend, started, machine)
            for server in servers:
                if server.process.poll() is not None:
                    raise RuntimeError(f"{server.name} died:\n{server.log_tail()}")
            return 0 if ok or not args.check else 1
        finally:
            for server in servers:
                server.stop()
            if postgres is not None:
                postgres.drop()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop when it is installed (as the servers do)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def login(server: Server, password: str) -> str:
    response = httpx.post(
        f"{server.base}/token", data={"username": USERNAME, "password": password}, timeout=30
    )
    if response.status_code != 200:
        raise RuntimeError(f"login failed: {response.status_code} {response.text}")
    return str(response.json()["access_token"])


def check_me(server: Server, token: str) -> None:
    response = httpx.get(
        f"{server.base}/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    if response.status_code != 200 or response.json().get("username") != USERNAME:
        raise RuntimeError(f"{server.name}: GET /users/me gave {response.status_code}")


if __name__ == "__main__":
    sys.exit(main())
