"""Benchmark ``GET /users/me`` and the refresh grant per JWT algorithm (``AUTHDB_JWT_ALGORITHM``).

For every database given (a temporary SQLite file, and/or a PostgreSQL server) and every
algorithm (``HS256``, ``RS256``, ``ES256``, ``EdDSA``), starts one ``authdb serve`` on its own
database (a deployment has one algorithm: its key pair lives in ``signing_keys``), logs in and
then measures, with the load generator of ``bench_users_me.py``:

* ``GET /users/me`` with ``--concurrency`` keep-alive connections: token **verification** plus
  the per-request session check, as in ``bench_users_me.py``;
* ``POST /token`` with ``grant_type=refresh_token`` from ``--refresh-concurrency`` clients, each
  on its own session, spending the refresh token the previous answer gave: token **signing**
  plus one write transaction. (The password grant would measure argon2, not the signature.)

Phases are interleaved (round after round, every server in turn, the order reversed on even
rounds), so a change in the machine's load hits every algorithm alike. Besides requests/s and
latency it prints the server's CPU per request, read from ``/proc`` for the server's process
tree. The CPU of PostgreSQL's own backends is not included.

Pinning: ``--server-cpus`` runs every server under ``taskset -c``; ``--client-cpus`` pins this
load generator (``os.sched_setaffinity``). On a 2-core machine ``--server-cpus 1 --client-cpus 0``
gives the server one whole core and keeps the load generator off it. Usage::

    .venv/bin/python bench/bench_algorithms.py --server-cpus 1 --client-cpus 0 \\
        --database-url sqlite --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/

Every process the script starts is stopped by its PID; the PostgreSQL databases it creates
(``authdb_bench_<random>``, one per algorithm) are dropped, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import secrets
import statistics
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import bench_users_me as bench
import httpx
import jwt
from bench_users_me import Load, Result, Server

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")


@dataclasses.dataclass
class Target:
    """One ``authdb serve`` with one algorithm on one database, and what it was measured at."""

    backend: str  # "SQLite" or "PostgreSQL"
    algorithm: str
    server: Server
    access_token: str
    refresh_loads: list[Load]
    me: list[Result] = dataclasses.field(default_factory=list)
    refresh: list[Result] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.algorithm}"


def login(server: Server, password: str) -> tuple[str, str]:
    """(access token, refresh token) of a new session."""
    response = httpx.post(
        f"{server.base}/token",
        data={"username": bench.USERNAME, "password": password},
        timeout=60,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{server.name}: login failed: {response.status_code} {response.text}")
    body = response.json()
    return str(body["access_token"]), str(body["refresh_token"])


def refresh_load(target_label: str, port: int, refresh_token: str) -> Load:
    """One client spending its session's refresh tokens one after the other."""

    def advance(body: bytes) -> bytes:
        return bench.refresh_request(port, json.loads(body)["refresh_token"])

    return Load(
        f"{target_label} refresh",
        port,
        bench.refresh_request(port, refresh_token),
        concurrency=1,
        advance=advance,
    )


def merged(label: str, results: list[Result]) -> Result:
    """The results of several single-client loads of one phase, as one."""
    total = Result(label, results[0].seconds, [], Counter(), 0)
    for r in results:
        total.latencies.extend(r.latencies)
        total.statuses.update(r.statuses)
        total.errors += r.errors
        total.in_time += r.in_time
    total.server_cpu = results[0].server_cpu
    total.client_cpu = results[0].client_cpu
    return total


def cpu_per_request_us(r: Result) -> float:
    return r.server_cpu * r.seconds / r.in_time * 1e6 if r.in_time else math.nan


def start_target(
    backend: str, database_url: str, algorithm: str, workdir: Path, pinned: list[str]
) -> tuple[Target, str]:
    """Create the user and start ``authdb serve``; returns the target and the password."""
    env = bench.clean_env(
        {
            "AUTHDB_DATABASE_URL": database_url,
            "AUTHDB_SECRET_KEY": secrets.token_urlsafe(48),
            "AUTHDB_JWT_ALGORITHM": algorithm,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if backend == "PostgreSQL":
        bench.run_authdb(["migrate"], env, workdir)
    password = f"bench-{secrets.token_urlsafe(18)}"
    bench.run_authdb(
        ["createuser", "--username", bench.USERNAME, "--email", bench.EMAIL, "--password-stdin"],
        env,
        workdir,
        stdin=password + "\n",
    )
    port = bench.free_port()
    name = f"authdb serve {backend} {algorithm}"
    argv = [*pinned, bench.AUTHDB, "serve", *bench.listen(port), "--workers", "1"]
    server = bench.start_server(name, argv, env, workdir, port)
    return Target(backend, algorithm, server, "", []), password


def prepare(target: Target, password: str, clients: int) -> None:
    """Log in once for ``/users/me`` and once per refresh client; check the algorithm."""
    bench.wait_healthy(target.server)
    target.access_token, _ = login(target.server, password)
    alg = jwt.get_unverified_header(target.access_token)["alg"]
    if alg != target.algorithm:
        raise RuntimeError(f"{target.server.name} signs with {alg}, not {target.algorithm}")
    bench.check_me(target.server, target.access_token)
    port = target.server.port
    target.refresh_loads = [
        refresh_load(target.label, port, login(target.server, password)[1]) for _ in range(clients)
    ]
    print(
        f"{target.server.name}: pid {target.server.process.pid}, {target.server.base}, "
        f"access token {len(target.access_token)} bytes",
        flush=True,
    )


async def measure_round(args: argparse.Namespace, targets: list[Target], number: int) -> None:
    order = targets if number % 2 else list(reversed(targets))
    for target in order:
        server = target.server
        me = Load(
            f"{target.label} /users/me",
            server.port,
            bench.get_request(server.port, "/users/me", target.access_token),
            args.concurrency,
        )
        print(f"  {target.label}: /users/me, then refresh", flush=True)
        if args.warmup > 0:
            await bench.run_phase([me], args.warmup, [server], record=False)
        (result,) = await bench.run_phase([me], args.duration, [server])
        target.me.append(result)
        loads = target.refresh_loads
        if args.warmup > 0:
            await bench.run_phase(loads, args.warmup, [server], record=False)
        results = await bench.run_phase(loads, args.duration, [server])
        target.refresh.append(merged(f"{target.label} refresh", results))


def report(
    targets: list[Target], args: argparse.Namespace, started: datetime, machine: str
) -> None:
    print()
    print(
        f"authdb per-algorithm benchmark, {started:%Y-%m-%d %H:%M} UTC; --workers 1; "
        f"{args.duration:g} s per phase, {args.repeat} round(s); GET /users/me: "
        f"{args.concurrency} connections; POST /token refresh grant: "
        f"{args.refresh_concurrency} clients"
    )
    print(machine)
    print(
        f"servers pinned to CPU {args.server_cpus or 'any'}, load generator to CPU "
        f"{args.client_cpus or 'any'}"
    )
    header = (
        f"{'':30} {'round':>5} {'ok':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'fail':>5} "
        f"{'srv CPU':>8} {'µs CPU/req':>11} {'gen CPU':>8}"
    )
    for kind in ("me", "refresh"):
        print()
        title = "GET /users/me (verify)" if kind == "me" else "POST /token refresh grant (sign)"
        print(title)
        print(header)
        print("-" * len(header))
        for target in targets:
            results: list[Result] = getattr(target, kind)
            for number, r in enumerate(results, 1):
                print(
                    f"{target.label:30} {number:>5} {r.ok:>7} {r.rps:>8.0f} "
                    f"{r.percentile(0.50):>8.2f} {r.percentile(0.99):>8.2f} {r.failures:>5} "
                    f"{r.server_cpu:>8.2f} {cpu_per_request_us(r):>11.0f} {r.client_cpu:>8.2f}"
                )
                if set(r.statuses) - {200}:
                    print(f"    non-200 answers: {dict(r.statuses)}")
    print()
    print("Medians over the rounds (and relative to HS256 on the same database):")
    print(
        f"{'':18} {'/users/me req/s':>16} {'µs CPU/req':>11} {'vs HS256':>9}   "
        f"{'refresh req/s':>14} {'µs CPU/req':>11} {'vs HS256':>9}"
    )
    baseline: dict[str, tuple[float, float]] = {}
    for target in targets:
        me_cpu = statistics.median(cpu_per_request_us(r) for r in target.me)
        refresh_cpu = statistics.median(cpu_per_request_us(r) for r in target.refresh)
        if target.algorithm == "HS256":
            baseline[target.backend] = (me_cpu, refresh_cpu)
        base = baseline.get(target.backend)
        me_delta = f"{me_cpu - base[0]:+9.0f}" if base else f"{'':9}"
        refresh_delta = f"{refresh_cpu - base[1]:+9.0f}" if base else f"{'':9}"
        print(
            f"{target.label:18} {statistics.median(r.rps for r in target.me):>16.0f} "
            f"{me_cpu:>11.0f} {me_delta}   "
            f"{statistics.median(r.rps for r in target.refresh):>14.0f} "
            f"{refresh_cpu:>11.0f} {refresh_delta}"
        )
    print(
        "(srv CPU: cores used by the server's process tree; µs CPU/req: that CPU over the "
        "requests answered in the window; PostgreSQL's own backends not included)"
    )
    starved = [r for t in targets for r in t.me if r.server_cpu < 0.8]
    if starved:
        print(
            f"note: in {len(starved)} /users/me phase(s) the server got less than 0.8 of a core "
            "although 32 connections kept it busy: something else ran on its CPU, so req/s there "
            "is low; compare µs CPU/req rather than req/s."
        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average after the run {load}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GET /users/me and the refresh grant of authdb serve, per JWT algorithm."
    )
    parser.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help=f"comma-separated, from {', '.join(ALGORITHMS)}; HS256 first gives the baseline",
    )
    parser.add_argument(
        "--database-url",
        action="append",
        help="'sqlite' (a temporary file per algorithm) or a PostgreSQL server URL, e.g. "
        "postgresql+asyncpg://postgres@127.0.0.1:5432/ (a throwaway database per algorithm is "
        "created and dropped); repeat for both. Default: sqlite",
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32, help="/users/me connections")
    parser.add_argument(
        "--refresh-concurrency", type=int, default=4, help="refresh clients (one session each)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="rounds")
    parser.add_argument("--server-cpus", help="taskset -c list for every server, e.g. 1")
    parser.add_argument("--client-cpus", help="CPU list for this load generator, e.g. 0")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = set(args.algorithms) - set(ALGORITHMS)
    if unknown:
        parser.error(f"unknown algorithm(s): {', '.join(sorted(unknown))}")
    args.database_url = args.database_url or ["sqlite"]
    numbers = (args.duration, args.concurrency, args.refresh_concurrency, args.repeat)
    if min(numbers) <= 0 or args.warmup < 0:
        parser.error("--duration, --concurrency, --refresh-concurrency, --repeat: positive")
    return args


def cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    if args.client_cpus:
        os.sched_setaffinity(0, cpu_list(args.client_cpus))
    pinned = ["taskset", "-c", args.server_cpus] if args.server_cpus else []
    machine = bench.machine_description()
    targets: list[Target] = []
    databases: list[bench.ThrowawayPostgres] = []
    with bench.work_directory(args.keep) as workdir:
        try:
            started_targets = []
            for url in args.database_url:
                for algorithm in args.algorithms:
                    if url.startswith("sqlite"):
                        backend = "SQLite"
                        database_url = f"sqlite+aiosqlite:///{workdir / f'{algorithm}.db'}"
                    else:
                        backend = "PostgreSQL"
                        postgres = bench.ThrowawayPostgres(url)
                        postgres.create()
                        databases.append(postgres)
                        database_url = postgres.url
                    target, password = start_target(
                        backend, database_url, algorithm, workdir, pinned
                    )
                    targets.append(target)
                    started_targets.append((target, password))
            for target, password in started_targets:
                prepare(target, password, args.refresh_concurrency)
            for number in range(1, args.repeat + 1):
                print(f"round {number} of {args.repeat}", flush=True)
                bench.run_async(measure_round(args, targets, number))
            report(targets, args, started, machine)
            for target in targets:
                if target.server.process.poll() is not None:
                    raise RuntimeError(f"{target.server.name} died:\n{target.server.log_tail()}")
            return 0
        finally:
            for target in targets:
                target.server.stop()
            for postgres in databases:
                try:
                    postgres.drop()
                except Exception as exc:  # keep dropping the others
                    print(f"could not drop {postgres.name}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
