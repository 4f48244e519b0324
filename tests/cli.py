"""Running the real ``authdb`` console script, as a user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

AUTHDB = str(Path(sys.executable).with_name("authdb"))

# Cheap argon2id parameters for the test suite: still argon2id, a millisecond a hash instead of
# a tenth of a second. Tests of the hasher itself use the production defaults. And plain
# hashing threads: on a loaded machine an idle-priority hash may be starved and run again by
# its rescuer (authdb.hash_threads), which tests that count or hold hash calls would see twice;
# tests/test_hash_threads.py covers the default, idle priority, in process and served.
FAST_HASHING: dict[str, Any] = {
    "password_hash_time_cost": 1,
    "password_hash_memory_kib": 1024,
    "password_hash_parallelism": 1,
    "password_hash_priority": "normal",
}


def subprocess_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without AUTHDB_* settings, plus fast hashing and ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHDB_")}
    fast = {f"AUTHDB_{name.upper()}": str(value) for name, value in FAST_HASHING.items()}
    return {**clean, **fast, **env}


def run_cli(
    args: list[str], *, env: dict[str, str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``authdb ARGS`` with the AUTHDB_* variables in ``env`` only."""
    return subprocess.run(
        [AUTHDB, *args],
        env=subprocess_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def invoke_cli(
    args: list[str], *, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``authdb ARGS`` in this process (Typer's runner, in a thread of its own so that the
    command's ``asyncio.run`` never meets a test's loop), as ``run_cli`` would: the same
    command code without an interpreter's start-up (about 1.3 s), for tests that run the CLI
    dozens of times. Only the AUTHDB_* variables of ``env`` (and fast hashing) are set; an
    exception the command does not turn into an exit status is raised here, failing the test.
    """
    from typer.testing import CliRunner

    from authdb.cli import app

    variables: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHDB_")}
    variables |= {f"AUTHDB_{name.upper()}": str(value) for name, value in FAST_HASHING.items()}
    variables |= env
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            CliRunner().invoke(app, args, input=stdin, env=variables, catch_exceptions=True)
        )
    )
    worker.start()
    worker.join(timeout=120)
    if not outcome:
        raise AssertionError(f"authdb {' '.join(args)} did not finish in 120 s")
    result = outcome[0]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        ["authdb", *args], result.exit_code, result.stdout, result.stderr
    )


def migrated_env(database_url: str, secret: str = "cli-test-secret-" + "s" * 32) -> dict[str, str]:
    """The AUTHDB_* variables of a CLI test on ``database_url``, after ``authdb migrate``."""
    env = {"AUTHDB_DATABASE_URL": database_url, "AUTHDB_SECRET_KEY": secret}
    migrated = invoke_cli(["migrate"], env=env)
    assert migrated.returncode == 0, migrated.stderr
    return env


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Poll ``base``/healthz until the server answers; fail (with the log's tail) if the
    process exits first or takes over a minute, generous for a loaded machine."""
    import httpx  # here, so that tests that only run the CLI need not import it

    def tail() -> str:
        return log.read_text()[-2000:] if log is not None and log.exists() else ""

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"authdb serve exited with {process.returncode}: {tail()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)  # not up yet: pause, unless it exits meanwhile
    raise AssertionError(f"authdb serve did not become healthy: {tail()}")
