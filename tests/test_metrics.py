"""``GET /metrics``: Prometheus metrics per route template, sign-in outcomes, lockouts, rate-limit
refusals, password-hash seconds and live sessions; one truth across ``authdb serve --workers``.

The metrics are global to a process, so the in-process tests compare a scrape before and after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.hash_threads import HashThreads
from authdb.http.metrics_middleware import MetricsMiddleware
from authdb.services import provisioning
from authdb.services.core import CLI_CLIENT
from tests.cli import AUTHDB, FAST_HASHING, subprocess_env, wait_healthy
from tests.conftest import PASSWORD, Harness, free_port
from tests.test_hash_threads import held_once

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
WRONG = "not the right password"


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(harness: Harness) -> Samples:
    response = await harness.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


@pytest.fixture
async def metered(make_harness: Callable[..., Awaitable[Harness]]) -> Harness:
    return await make_harness(
        metrics_enabled=True, login_max_failures=3, rate_limit_register="2/minute"
    )


async def test_requests_are_counted_per_route_template_and_status(
    metered: Harness, make_harness: Callable[..., Awaitable[Harness]]
) -> None:
    before = await scrape(metered)
    assert (await metered.client.get("/users/123456789")).status_code == 401
    assert (await metered.client.get("/users/me")).status_code == 401
    assert (await metered.client.get("/no/such/path/987654321")).status_code == 404
    assert (await metered.client.request("BREW", "/healthz")).status_code == 405
    response = await metered.client.get("/metrics")
    after = parse(response.text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "authdb_http_requests_total"
    assert grew(requests, method="GET", route="/users/{user_id}", status="401") == 1
    assert grew(requests, method="GET", route="/users/me", status="401") == 1
    assert grew(requests, method="GET", route="unmatched", status="404") == 1
    assert grew(requests, method="other", route="/healthz", status="405") == 1
    assert grew(requests, method="GET", route="/metrics", status="200") == 1  # the first scrape
    durations = "authdb_http_request_duration_seconds_count"
    assert grew(durations, method="GET", route="/users/{user_id}") == 1
    # A raw path never becomes a label: anyone could make series without end.
    assert "123456789" not in response.text and "987654321" not in response.text
    assert "BREW" not in response.text
    # Not in the API's description, and absent (404) unless enabled.
    schema = (await metered.client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]
    off = await make_harness()
    assert (await off.client.get("/metrics")).status_code == 404
    # Off, requests are not even timed: the middleware is not there.
    timed = [m.cls is MetricsMiddleware for m in create_app(auth=off.auth).user_middleware]
    assert timed.count(True) == 0
    timed = [m.cls is MetricsMiddleware for m in create_app(auth=metered.auth).user_middleware]
    assert timed.count(True) == 1
    assert (await off.client.get("/metrics")).json() == {"detail": "Not Found"}


async def test_sign_ins_lockouts_refusals_hashing_and_live_sessions(metered: Harness) -> None:
    before = await scrape(metered)
    await metered.create_user("alice")
    assert value(await scrape(metered), "authdb_live_sessions") == 0
    tokens = await metered.login("alice")
    assert value(await scrape(metered), "authdb_live_sessions") == 1
    for _ in range(3):  # the third failure locks the account
        refused = await metered.client.post("/token", data={"username": "alice", "password": WRONG})
        assert refused.status_code == 401
    locked = await metered.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await metered.client.post("/logout", headers=bearer)).status_code == 204
    for n in range(3):  # a budget of 2 a minute
        response = await metered.client.post(
            "/register",
            json={"username": f"user{n}", "email": f"user{n}@example.com", "password": PASSWORD},
        )
        assert response.status_code == (429 if n == 2 else 201), response.text
    after = await scrape(metered)
    assert value(after, "authdb_live_sessions") == 0

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("authdb_logins_total", outcome="ok") == 1
    assert grew("authdb_logins_total", outcome="failed") == 3
    assert grew("authdb_logins_total", outcome="locked") == 1
    assert grew("authdb_lockouts_total") == 1
    assert grew("authdb_rate_limited_total", limit="register") == 1
    # A locked account is no rate-limit refusal.
    assert grew("authdb_rate_limited_total", limit="login_failures") == 0
    # Three accounts made; five sign-ins, of which the locked one checked no password.
    assert grew("authdb_password_hash_seconds_count", op="hash") == 3
    assert grew("authdb_password_hash_seconds_count", op="verify") == 4
    assert grew("authdb_password_hash_seconds_sum", op="verify") > 0


def test_metrics_without_the_extra_are_refused_naming_it(tmp_path: Path) -> None:
    """``authdb serve`` with metrics on and prometheus-client missing: a one-line error."""
    hide = (
        "import sys; sys.modules['prometheus_client'] = None; from authdb.cli import main; main()"
    )
    env = {"AUTHDB_METRICS_ENABLED": "true", "AUTHDB_SECRET_KEY": "k" * 40}
    result = subprocess.run(
        [sys.executable, "-c", hide, "serve", "--port", str(free_port())],
        env=subprocess_env(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "pip install 'authdb[metrics]'" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_database_failure_leaves_out_the_gauge_not_the_scrape(metered: Harness) -> None:
    """The live-session count needs the database; the counters do not, and matter most
    during an outage: the scrape answers without the gauge instead of failing."""
    await metered.create_user("alice")
    await metered.login("alice")
    async with metered.auth.core.engine.begin() as connection:
        await connection.execute(text("ALTER TABLE auth_sessions RENAME TO auth_sessions_away"))
    try:
        samples = await scrape(metered)
        assert not [name for name, _ in samples if name == "authdb_live_sessions"]
        assert value(samples, "authdb_logins_total", outcome="ok") >= 1
    finally:
        async with metered.auth.core.engine.begin() as connection:
            await connection.execute(text("ALTER TABLE auth_sessions_away RENAME TO auth_sessions"))


# --- the real server, two workers -----------------------------------------------------------------


async def _prepare(database_url: str) -> None:
    """`authdb migrate` and `authdb createuser alice`, done in-process."""
    auth = Auth(Settings(_env_file=None, database_url=database_url, **FAST_HASHING))
    try:
        await migrate.upgrade(auth.core.engine)
        await auth.startup(issue_tokens=False)
        await provisioning.create_user(
            auth.core,
            username="alice",
            email="alice@example.com",
            password=PASSWORD,
            client=CLI_CLIENT,
            is_verified=True,
        )
    finally:
        await auth.shutdown()


def _worker_pids(metrics_dir: Path, count: int) -> list[int]:
    """The workers' process ids, from the files each writes once its metrics exist."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = sorted(int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("counter_*.db"))
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"expected {count} workers' files in {metrics_dir}")


def _client_of(base: str, worker: int, others: list[int]) -> httpx.Client:
    """A keep-alive client whose connection ``worker`` accepted: the other workers are paused
    (SIGSTOP) while it connects, then resumed."""
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        client = httpx.Client(base_url=base)
        assert client.get("/healthz").status_code == 200
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
    return client


def _logins_counted_by(metrics_dir: Path, pid: int) -> float:
    """Successful sign-ins one worker counted, read from its own file."""
    families = MultiProcessCollector.merge([str(metrics_dir / f"counter_{pid}.db")])  # type: ignore[no-untyped-call]
    return sum(
        float(sample.value)
        for family in families
        for sample in family.samples
        if sample.name == "authdb_logins_total" and sample.labels == {"outcome": "ok"}
    )


async def test_two_workers_report_one_truth(tmp_path: Path, database_url: str) -> None:
    """20 sign-ins, 10 on each of two workers, count 20 whichever worker answers the scrape;
    the serve process removes its private metrics directory when it stops."""
    await _prepare(database_url)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        "AUTHDB_DATABASE_URL": database_url,
        "AUTHDB_SECRET_KEY": "metrics-test-secret-key-0123456789abcdef",
        "AUTHDB_METRICS_ENABLED": "true",
        "TMPDIR": str(temp),  # where the serve process makes its metrics directory
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [AUTHDB, "serve", "--port", str(port), "--workers", "2"],
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    clients: list[httpx.Client] = []
    try:
        wait_healthy(base, process, log)
        [metrics_dir] = list(temp.glob("authdb-metrics-*"))
        assert stat.S_IMODE(metrics_dir.stat().st_mode) == 0o700
        workers = _worker_pids(metrics_dir, 2)
        # The kernel hands a new connection to whichever worker wakes first, mostly the same
        # one: each client is made to connect to a chosen worker instead.
        clients = [_client_of(base, pid, [o for o in workers if o != pid]) for pid in workers]
        for number in range(20):
            client = clients[number % 2]
            answer = client.post("/token", data={"username": "alice", "password": PASSWORD})
            assert answer.status_code == 200, answer.text
        assert [_logins_counted_by(metrics_dir, pid) for pid in workers] == [10, 10]
        for client in clients * 3:  # each worker answers scrapes
            samples = parse(client.get("/metrics").text)
            assert value(samples, "authdb_logins_total", outcome="ok") == 20
            assert value(samples, "authdb_live_sessions") == 20
            assert value(samples, "authdb_password_hash_seconds_count", op="verify") == 20
            assert value(samples, "authdb_http_requests_total", **_TOKEN_OK) == 20
    finally:
        for client in clients:
            client.close()
        process.terminate()
        process.wait(timeout=20)
    assert not list(temp.glob("authdb-metrics-*")), log.read_text()


_TOKEN_OK = {"method": "POST", "route": "/token", "status": "200"}


async def test_a_rescued_hash_is_counted(metered: Harness) -> None:
    """authdb_password_hash_rescues_total: a hash held on the idle thread (as a starved one
    is) is run again by its rescuer and counted once."""
    before = await scrape(metered)
    assert ("authdb_password_hash_rescues_total", frozenset()) in before
    pool = HashThreads(1, "idle")
    release, started = threading.Event(), threading.Event()
    try:
        held = pool.submit(held_once(release, started))
        assert await asyncio.to_thread(held.result, 30) == f"{pool.name}-0-rescue"
    finally:
        release.set()
        pool.shutdown()
    after = await scrape(metered)
    rescues = "authdb_password_hash_rescues_total"
    assert value(after, rescues) - value(before, rescues) == pool.rescues == 1


async def test_a_hash_that_fails_is_timed_and_its_error_reaches_the_caller(
    metered: Harness,
) -> None:
    """authdb_password_hash_seconds counts password work that raised, too (measured on the
    hashing thread, recorded on the event loop); the caller gets the work's own error."""
    hasher = metered.auth.core.hasher
    count = "authdb_password_hash_seconds_count"
    before = value(await scrape(metered), count, op="hash")

    def broken(password: str) -> str:
        raise ValueError(f"cannot hash {len(password)} characters")

    with pytest.raises(ValueError, match="cannot hash 6 characters"):
        await hasher._off_loop("hash", broken, "secret")
    assert value(await scrape(metered), count, op="hash") - before == 1
