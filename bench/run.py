"""The benchmark of authdb's performance targets: one command, one table.

    .venv/bin/python bench/run.py                  # everything, 3 rounds of 10 s (~40 min)
    .venv/bin/python bench/run.py --quick          # everything, 1 short round (~6 min)
    .venv/bin/python bench/run.py --only users_me,logins --databases sqlite
    .venv/bin/python bench/run.py --smoke          # one tiny phase (~20 s), for the test suite

Systems: authdb (``authdb serve``) on SQLite and PostgreSQL, with and without its session
cache; the bare app (``bare_app.py``: FastAPI + ``OAuth2PasswordBearer`` + ``jwt.decode`` of
authdb's token); FastAPI's security tutorial on a database (``tutorial_app.py``) and
fastapi-users 15 (``fastapi_users_app.py``), both installed in ``bench/.peers-venv``, never in
authdb's environment. Every server runs on CPU 0 (``taskset -c 0``), wrk on CPU 1 with a Lua
script (``benchkit/wrk.py``), this script on CPU 1 too. CPU per request comes from
``/proc/PID/stat`` of the server's process tree. Progress goes to standard error, the table
to standard output. Every process started is stopped by PID and every PostgreSQL database
created is dropped, also on errors and Ctrl-C. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchkit import databases, peers, phases, report, systems, wrk
from benchkit.procs import BenchError, Processes, require_tools
from benchkit.results import Results, Summary
from benchkit.systems import System

PARTS = ("users_me", "logins", "mixed", "scale", "workers", "rss", "revocation")
DATABASES = ("sqlite", "postgresql")
DB_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
# authdb's own targets (issue 12), per database where they differ.
VS_BARE = {"sqlite": 0.70, "postgresql": 0.65}
OF_LIMIT, NON_HASH_MS, KEPT, STORM_P99, FLAT, RSS_MB, REVOKE_MS = 0.9, 4.0, 0.5, 1.5, 0.1, 150, 50
CACHE_SETTING = "session_cache_size"


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="authdb's performance benchmark: every system, every target, one table.",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of every phase (default 3)")
    p.add_argument("--duration", type=int, default=10, help="measured seconds per phase")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each")
    p.add_argument("--connections", type=int, default=32, help="GET /users/me connections")
    p.add_argument("--login-connections", type=int, default=4, help="login connections")
    p.add_argument("--only", help=f"comma-separated parts of {','.join(PARTS)} (default all)")
    p.add_argument("--databases", default="sqlite,postgresql", help="sqlite,postgresql")
    p.add_argument("--no-peers", action="store_true", help="skip tutorial and fastapi-users")
    p.add_argument("--users", type=int, default=1_000, help="users in the table (default 1k)")
    p.add_argument("--large-users", type=int, default=1_000_000, help="for 'scale' (1M)")
    p.add_argument("--rss-requests", type=int, default=1_000_000, help="for 'rss' (1M)")
    p.add_argument("--revocation-trials", type=int, default=30, help="for 'revocation'")
    p.add_argument("--server-cpus", default="0", help="taskset list for servers (0)")
    p.add_argument("--load-cpus", default="1", help="taskset list for wrk and this script (1)")
    p.add_argument("--quick", action="store_true", help="1 round of 3 s, smaller counts")
    p.add_argument("--smoke", action="store_true", help="bare app and authdb on SQLite, 1 s")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if args.quick or args.smoke:
        args.rounds, args.duration, args.warmup = 1, 3, 1
        args.large_users = min(args.large_users, 50_000)
        args.rss_requests = min(args.rss_requests, 20_000)
        args.revocation_trials = min(args.revocation_trials, 10)
    if args.smoke:
        args.duration, args.only, args.databases, args.no_peers = 1, "users_me", "sqlite", True
    args.parts = set(PARTS) if not args.only else set(args.only.split(","))
    args.dbs = [d for d in DATABASES if d in args.databases.split(",")]
    unknown = args.parts - set(PARTS)
    bad_db = set(args.databases.split(",")) - set(DATABASES)
    if unknown or bad_db or not args.dbs:
        p.error(f"unknown part(s) or database(s): {', '.join(sorted(unknown | bad_db)) or '-'}")
    if min(args.rounds, args.duration, args.connections, args.login_connections) < 1:
        p.error("--rounds, --duration and the connection counts must be at least 1")
    if args.users < 3 or args.large_users < args.users:
        p.error("--users must be at least 3 and --large-users at least --users")
    return args


# --------------------------------------------------------------------------------------------
# The plan: which systems, which phases on each
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    system: System
    phases: list[str]


@dataclass
class Plan:
    blocks: list[Block] = field(default_factory=list)
    rss: list[System] = field(default_factory=list)
    revocation: list[System] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def add(self, system: System, phase_list: list[str]) -> None:
        if phase_list:
            self.blocks.append(Block(system, phase_list))
            self.labels[system.key] = system.label


def authdb_knows_cache() -> bool:
    from authdb.settings import Settings

    return CACHE_SETTING in Settings.model_fields


def argon2_defaults() -> tuple[int, int, int]:
    """authdb's default argon2id cost: (time cost, memory KiB, parallelism)."""
    from authdb.settings import Settings

    f = Settings.model_fields
    return (
        int(f["password_hash_time_cost"].default),
        int(f["password_hash_memory_kib"].default),
        int(f["password_hash_parallelism"].default),
    )


@dataclass
class Setup:
    """Databases made, the secret key, and the last authdb token (the bare app's)."""

    args: argparse.Namespace
    workdir: Path
    postgres: databases.Postgres
    env: dict[str, str]
    tokens: list[str] = field(default_factory=list)

    def database(self, db: str, name: str) -> str:
        if db == "sqlite":
            return f"sqlite+aiosqlite:///{self.workdir / name}.db"
        return self.postgres.create()

    def remember(self, token: Callable[[int], str]) -> Callable[[int], str]:
        def wrapped(port: int) -> str:
            value = token(port)
            self.tokens.append(value)
            return value

        return wrapped

    def last_token(self) -> str:
        if not self.tokens:
            raise BenchError("the bare app needs an authdb token: run an authdb system first")
        return self.tokens[-1]


def main_phases(parts: set[str]) -> list[str]:
    """Phases on authdb with the smaller table. The ratios of 'mixed' and 'scale' are to its
    /users/me and logins alone, so those run whenever either part does."""
    out = []
    if parts & {"users_me", "scale", "mixed"}:
        out.append("users_me")
    if parts & {"logins", "scale", "mixed"}:
        out.append("logins")
    return [*out, "mixed", "storm"] if "mixed" in parts else out


def authdb_systems(setup: Setup, db: str, plan: Plan) -> None:
    """authdb on database ``db``: as configured by default, with its session cache off, with
    ``--large-users`` users, and with two workers, as the selected parts need."""
    args, parts, label = setup.args, setup.args.parts, DB_LABEL[db]
    cache = authdb_knows_cache() and not args.smoke
    off = {"AUTHDB_SESSION_CACHE_SIZE": "0"}

    def make(key: str, text: str, url: str, users: tuple[str, str], **kw: Any) -> System:
        env = {**setup.env, **kw.pop("extra", {})}
        system = systems.authdb_system(
            key, text, database=label, url=url, env=env, users=users, **kw
        )
        system.token = setup.remember(system.token)
        return system

    say(f"preparing authdb on {label}: {args.users:,} users")
    url = setup.database(db, "authdb")
    users = systems.prepare_authdb(url, args.users, setup.env, setup.workdir)
    main = make(f"authdb-{db}", f"authdb, {label}", url, users)
    plan.labels[f"{main.key}@scale"] = f"authdb, {label}, {args.users:,} users"
    plan.labels[f"{main.key}-nocache@scale"] = f"authdb, {label}, {args.users:,} users, cache off"
    plan.add(main, main_phases(parts))
    if db == args.dbs[0] and "users_me" in parts:
        plan.add(systems.bare_system(setup.env, setup.last_token), ["users_me"])
    if cache and parts & {"users_me", "scale"}:
        text = f"authdb, {label}, cache off"
        plan.add(make(f"authdb-{db}-nocache", text, url, users, extra=off), ["users_me"])
    if "scale" in parts:
        say(f"preparing authdb on {label}: {args.large_users:,} users")
        big = setup.database(db, "authdb-large")
        big_users = systems.prepare_authdb(big, args.large_users, setup.env, setup.workdir)
        text = f"authdb, {label}, {args.large_users:,} users"
        plan.add(make(f"authdb-{db}-large", text, big, big_users), ["users_me", "logins"])
        if cache:
            key = f"authdb-{db}-large-nocache"
            plan.add(make(key, f"{text}, cache off", big, big_users, extra=off), ["users_me"])
    if "workers" in parts:
        cpus = f"{args.server_cpus},{args.load_cpus}"
        two = make(
            f"authdb-{db}-2w", f"authdb, {label}, --workers 2", url, users, workers=2, cpus=cpus
        )
        plan.add(two, ["users_me", "logins"])
    if "rss" in parts:
        plan.rss.append(main)
    if "revocation" in parts:
        plan.revocation.append(main)


def peer_systems(setup: Setup, db: str, python: str, plan: Plan) -> None:
    """The tutorial app and fastapi-users on database ``db``: /users/me and logins."""
    label, parts = DB_LABEL[db], setup.args.parts
    wanted = [p for p in ("users_me", "logins") if p in parts]
    if not wanted:
        return
    say(f"preparing the reference apps on {label}")
    url = setup.database(db, "tutorial")
    systems.prepare_tutorial(python, url, setup.env, setup.workdir)
    plan.add(systems.tutorial_system(python, label, url, setup.env), wanted)
    url = setup.database(db, "fastapi-users")
    plan.add(systems.fastapi_users_system(python, label, url, setup.env), wanted)


# --------------------------------------------------------------------------------------------
# Description of the machine and the software
# --------------------------------------------------------------------------------------------


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    return f"{model}, {os.cpu_count()} CPUs{memory}, {platform.system()} {platform.release()}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions(peer_versions: dict[str, str], pg: str | None, source: str) -> str:
    cache = "no session cache setting"
    if authdb_knows_cache():
        from authdb.settings import Settings

        size = Settings.model_fields[CACHE_SETTING].default
        cache = f"AUTHDB_SESSION_CACHE_SIZE default {size}"
    ours = ["fastapi", "starlette", "uvicorn", "uvloop", "sqlalchemy", "aiosqlite", "asyncpg"]
    ours += ["pyjwt", "pwdlib", "argon2-cffi"]
    parts = [
        f"Python {platform.python_version()}",
        f"authdb {version('authdb')} ({source}; {cache})",
    ]
    parts += [f"{n} {version(n)}" for n in ours]
    parts += [f"SQLite {sqlite3.sqlite_version}"]
    if pg:
        parts.append(f"PostgreSQL {pg}")
    parts.append(f"wrk {wrk.version()}")
    if peer_versions:
        peer = ", ".join(f"{n} {v}" for n, v in peer_versions.items())
        parts.append(f"peers venv: {peer}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def targets(results: Results, rep: report.Report, dbs: list[str]) -> list[report.Target]:
    """Issue 12's targets for authdb on each database (those measured in this run)."""
    r, out, T = results, [], report.Target
    for db in dbs:
        k, on, vs_bare = f"authdb-{db}", DB_LABEL[db], VS_BARE[db]
        big = f"{k}-large"
        out += [
            T(f"1 /users/me CPU/req vs bare, {on}", f">= {vs_bare:.0%}", rep.vs_bare(k),
              at_least(vs_bare), report.PERCENT),
            T(f"1 revocation delay (max), {on}", f"<= {REVOKE_MS} ms",
              report.revocation_max(r, k), at_most(REVOKE_MS), report.MS),
            T(f"2 logins of the hashing limit, {on}", f">= {OF_LIMIT}", rep.of_limit(k),
              at_least(OF_LIMIT), report.FRACTION),
            T(f"2 non-hash CPU per login, {on}", f"<= {NON_HASH_MS:g} ms", rep.non_hash(k),
              at_most(NON_HASH_MS), report.MS),
            T(f"3 logins/s in a flood vs alone, {on}", f">= {KEPT:.0%}",
              r.ratio((k, "mix_login_rate"), (k, "login_rate")), at_least(KEPT),
              report.PERCENT),
            T(f"3 /users/me p99 in a login storm, {on}", f"<= {STORM_P99}x idle",
              r.ratio((k, "mix_me_p99"), (k, "me_p99")), at_most(STORM_P99), report.TIMES),
            T(f"3 ... the same, a light client, {on}", f"<= {STORM_P99}x idle",
              r.ratio((k, "storm_probe_p99"), (k, "probe_p99")), at_most(STORM_P99),
              report.TIMES),
            T(f"4 /users/me CPU/req, most vs fewest users, {on}", "0.90-1.10x",
              r.ratio((big, "me_cpu_us"), (k, "me_cpu_us")), flat, report.TIMES),
            T(f"4 CPU per login, most vs fewest users, {on}", "0.90-1.10x",
              r.ratio((big, "login_cpu_ms"), (k, "login_cpu_ms")), flat, report.TIMES),
            T(f"5 worker RSS after the requests, {on}", f"< {RSS_MB} MB",
              r.summary(k, "rss_after_mb"), below(RSS_MB), report.MB),
        ]  # fmt: skip
    return out


def flat(ratio: float) -> bool:
    return abs(ratio - 1) <= FLAT


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def below(limit: float) -> Callable[[float], bool]:
    return lambda value: value < limit


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authdb-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def environment(source: Path) -> dict[str, str]:
    """The servers' environment: ours without AUTHDB_* variables, a new secret key, and the
    snapshot of authdb's source first on the module path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHDB_")}
    env["AUTHDB_SECRET_KEY"] = os.urandom(32).hex()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    return env


def build_plan(setup: Setup) -> tuple[Plan, dict[str, str]]:
    plan = Plan()
    for db in setup.args.dbs:
        authdb_systems(setup, db, plan)
    peer_versions: dict[str, str] = {}
    if not setup.args.no_peers and setup.args.parts & {"users_me", "logins"}:
        python = str(peers.ensure())
        peer_versions = peers.versions()
        for db in setup.args.dbs:
            peer_systems(setup, db, python, plan)
    return plan, peer_versions


def measure_all(bench: phases.Bench, plan: Plan, args: argparse.Namespace) -> None:
    for round_ in range(1, args.rounds + 1):
        say(f"round {round_} of {args.rounds}")
        for b in plan.blocks:
            phases.block(bench, b.system, b.phases, round_)
    if plan.rss:
        say(f"memory after {args.rss_requests} requests")
    for system in plan.rss:
        phases.rss(bench, system, args.rss_requests)
    if plan.revocation:
        say("revocation delay")
    for system in plan.revocation:
        phases.revocation(bench, system, args.revocation_trials)


def render(bench: phases.Bench, plan: Plan, args: argparse.Namespace, head: list[str]) -> bool:
    """Print the table and the targets; True when no target is missed."""
    rep = report.Report(bench.results, plan.labels)
    dbs = args.dbs
    authdb = [f"authdb-{db}" for db in dbs]
    peers_ = [f"{app}-{db}" for app in ("tutorial", "fastapi-users") for db in dbs]
    me_rows = ["bare", *(k for db in dbs for k in (f"authdb-{db}", f"authdb-{db}-nocache"))]
    sections = [
        rep.users_me([*me_rows, *peers_], args.connections),
        rep.logins([*authdb, *peers_], args.login_connections),
        rep.mixed(authdb),
        rep.storm(authdb),
        scale_section(rep, dbs),
        rep.workers([(k, f"{k}-2w") for k in authdb]),
        rep.rss(authdb),
        rep.revocation(authdb),
    ]
    lines = list(head)
    for section in sections:
        if section:
            lines += ["", *section]
    goals = targets(bench.results, rep, dbs)
    lines += ["", *report.target_lines([t for t in goals if t.summary is not None])]
    print("\n".join(lines), flush=True)
    return report.ok_all(goals)


def scale_section(rep: report.Report, dbs: list[str]) -> list[str]:
    pairs = []
    for db in dbs:
        pairs += [
            (f"authdb-{db}", f"authdb-{db}-large"),
            (f"authdb-{db}-nocache", f"authdb-{db}-large-nocache"),
        ]
    return rep.scale(pairs)


def header(
    args: argparse.Namespace, started: datetime, load_before: str, info: str, results: Results
) -> list[str]:
    t, m, p = argon2_defaults()
    command = " ".join(["bench/run.py", *sys.argv[1:]])
    lines = [
        f"authdb benchmark, {started:%Y-%m-%d %H:%M} UTC: {command}",
        f"machine: {machine()}; load average {load_before} before, {load_average()} after",
        f"software: {info}",
        f"pinning: servers taskset -c {args.server_cpus}, wrk (1 thread) and this script on "
        f"CPU {args.load_cpus}; --workers 2 rows: the server on CPUs "
        f"{args.server_cpus},{args.load_cpus}, wrk still on {args.load_cpus}",
        f"rounds: {args.rounds} x {args.duration} s per phase after {args.warmup} s of warm-up; "
        f"cells: median [min-max] over rounds; argon2id m={m} KiB t={t} p={p} everywhere",
        f"users: {args.users:,} in authdb's table ({args.large_users:,} in the scale rows); "
        f"/users/me with one user's token; logins by another user in the flood",
    ]
    verifies = Summary.of(results.samples.get(("argon2", "verify_ms"), []))
    if verifies is not None:
        lines.append(
            f"one argon2id verify on CPU {args.server_cpus}: {report.cell(verifies, 1)} ms CPU "
            f"over {verifies.n} verifies around the login phases "
            f"(hashing limit {1e3 / verifies.median:.1f} logins/s)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = datetime.now(UTC), load_average()
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(OSError, ValueError):
        os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})
    postgres = databases.Postgres()
    with work_directory(args.keep) as workdir:
        processes = Processes(workdir)
        try:
            require_tools("wrk", "taskset")
            if "postgresql" in args.dbs and not databases.Postgres.available():
                args.dbs.remove("postgresql")
            source, source_info = systems.snapshot_authdb(workdir)
            setup = Setup(args, workdir, postgres, environment(source))
            plan, peer_versions = build_plan(setup)
            bench = phases.Bench(
                processes=processes,
                workdir=workdir,
                script=wrk.write_script(workdir),
                server_cpus=args.server_cpus,
                load_cpus=args.load_cpus,
                duration=args.duration,
                warmup=args.warmup,
                connections=args.connections,
                login_connections=args.login_connections,
                argon2=argon2_defaults(),
                results=Results(),
                say=say,
            )
            measure_all(bench, plan, args)
            pg = databases.Postgres.version() if "postgresql" in args.dbs else None
            info = versions(peer_versions, pg, source_info)
            head = header(args, started, load_before, info, bench.results)
            ok = render(bench, plan, args, head)
            if args.json:
                data = {"header": head, **bench.results.to_json()}
                args.json.write_text(json.dumps(data, indent=1))
            return 0 if ok or not args.check else 1
        except (BenchError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            clean_up(processes, postgres)


def clean_up(processes: Processes, postgres: databases.Postgres) -> None:
    """Stop every process started and drop every database made; a second Ctrl-C waits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    processes.stop_all()
    try:
        postgres.drop_all()
    except OSError as exc:
        print(f"could not drop the benchmark's databases: {exc}", file=sys.stderr)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
