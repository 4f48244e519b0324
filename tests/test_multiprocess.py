"""Two real ``authdb serve`` processes share one address budget (Redis) and one lock (database).

Redis: database 14 of the local server with a key prefix unique to the run; only keys under
that prefix are deleted afterwards, so nothing else in that Redis is touched.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import redis

from authdb import Auth, Settings
from authdb.db import migrate
from authdb.services import provisioning, signing_keys
from authdb.services.core import CLI_CLIENT
from tests.cli import AUTHDB, FAST_HASHING, subprocess_env, wait_healthy
from tests.conftest import PASSWORD, free_port, pg_database

REDIS_URL = "redis://127.0.0.1:6379/14"
SECRET = "multiprocess-test-secret-key-0123456789abcdef"
WRONG = "not the right password"


@contextmanager
def serving(env: dict[str, str], log_dir: Path, count: int = 2) -> Iterator[list[str]]:
    """``count`` ``authdb serve`` processes started together; yields their base URLs.

    They are terminated by PID afterwards, whatever happened.
    """
    processes: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for _ in range(count):
            port = free_port()
            log_path = log_dir / f"serve-{port}.log"
            with log_path.open("w") as log:
                process = subprocess.Popen(
                    [AUTHDB, "serve", "--port", str(port)],
                    env=subprocess_env(env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=log_dir,
                )
            processes.append((process, f"http://127.0.0.1:{port}", log_path))
        for process, base, log_path in processes:
            wait_healthy(base, process, log_path)
        yield [base for _, base, _ in processes]
    finally:
        for process, _, _ in processes:
            process.terminate()
        for process, _, _ in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def settings_of(env: dict[str, str]) -> Settings:
    """The Settings the AUTHDB_* variables of ``env`` make (with fast password hashing)."""
    values: dict[str, Any] = {
        name.removeprefix("AUTHDB_").lower(): value for name, value in env.items()
    }
    return Settings(_env_file=None, **{**values, **FAST_HASHING})


async def prepare(env: dict[str, str], *usernames: str, first_keys: bool = False) -> None:
    """What an operator does before starting the processes, done in-process with the settings
    in ``env``: `authdb migrate`; `authdb createuser` for each name (verified, password
    PASSWORD, email NAME@example.com); with ``first_keys``, `authdb keys rotate` (the first
    current and next key). Each CLI start costs a second of imports, and these commands are
    tested through the console script in test_cli.py and test_cli_keys.py."""
    auth = Auth(settings_of(env))
    try:
        await migrate.upgrade(auth.core.engine)
        await auth.startup(issue_tokens=False)  # as the CLI starts: no key made
        for username in usernames:
            await provisioning.create_user(
                auth.core,
                username=username,
                email=f"{username}@example.com",
                password=PASSWORD,
                client=CLI_CLIENT,
                is_verified=True,
            )
        if first_keys:
            await signing_keys.rotate(auth.core, CLI_CLIENT)
    finally:
        await auth.shutdown()


def _login(base: str, username: str, password: str = WRONG) -> httpx.Response:
    return httpx.post(f"{base}/token", data={"username": username, "password": password})


async def _audit_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT event, count(*) AS n FROM audit_events GROUP BY event")
    finally:
        await conn.close()
    return {row["event"]: row["n"] for row in rows}


async def test_two_processes_share_the_address_budget_and_the_account_lock(
    tmp_path: Path,
) -> None:
    prefix = f"authdb-mp-{uuid.uuid4().hex[:12]}"
    async with pg_database() as url:
        env = {
            "AUTHDB_DATABASE_URL": url,
            "AUTHDB_SECRET_KEY": SECRET,
            "AUTHDB_REDIS_URL": REDIS_URL,
            "AUTHDB_REDIS_KEY_PREFIX": prefix,
            "AUTHDB_REDIS_TIMEOUT_SECONDS": "5",  # a loaded machine is no outage
            "AUTHDB_LOGIN_MAX_FAILURES": "4",
            "AUTHDB_RATE_LIMIT_LOGIN_FAILURES": "6/minute",
            "AUTHDB_MAX_BODY_BYTES": "4096",
        }
        await prepare(env, "alice", "carol")
        try:
            with serving(env, tmp_path) as (a, b):
                # Four failures for alice, alternating processes: one count in the database.
                for base in (a, b, a, b):
                    assert _login(base, "alice").status_code == 401
                locked = _login(a, "alice", PASSWORD)
                assert locked.status_code == 429, "the lock set through B holds in A"
                assert int(locked.headers["retry-after"]) > 60  # a lock, not a rate limit

                # Five failures from this address so far (the locked attempt counts); one more
                # through B spends the sixth of the budget that both processes share.
                assert _login(b, "nobody").status_code == 401
                for base in (a, b):
                    # carol is not locked and has the right password: the address is over.
                    limited = _login(base, "carol", PASSWORD)
                    assert limited.status_code == 429
                    assert 0 < int(limited.headers["retry-after"]) <= 60

                # The real server also refuses an oversized chunked body while it streams.
                chunked = httpx.post(
                    f"{a}/token",
                    content=iter([b"a" * 1024] * 8),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                assert chunked.status_code == 413
                assert chunked.json()["detail"] == "Request body too large"
                assert chunked.json()["error"] == "invalid_request"  # /token speaks OAuth
                assert chunked.headers["x-content-type-options"] == "nosniff"
                declared = httpx.post(f"{b}/token", content=b"a" * 5000)
                assert declared.status_code == 413

            counts = await _audit_counts(url)
            assert counts["login_failed"] == 5
            assert counts["lockout"] == 1
            assert counts["login_locked"] == 1
            assert "login_ok" not in counts
            keys = redis.Redis.from_url(REDIS_URL).keys(f"{prefix}:*")
            assert [k for k in keys if b"login_failures/127.0.0.1" in k]
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)
            client.close()
