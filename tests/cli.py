"""Running the real ``authdb`` console script, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AUTHDB = str(Path(sys.executable).with_name("authdb"))

# Cheap argon2id parameters for the test suite: still argon2id, a millisecond a hash instead of
# a tenth of a second. Tests of the hasher itself use the production defaults.
FAST_HASHING = {
    "password_hash_time_cost": 1,
    "password_hash_memory_kib": 1024,
    "password_hash_parallelism": 1,
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
