"""Running the real ``authdb`` console script, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AUTHDB = str(Path(sys.executable).with_name("authdb"))


def run_cli(
    args: list[str], *, env: dict[str, str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``authdb ARGS`` with the AUTHDB_* variables in ``env`` only."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHDB_")}
    return subprocess.run(
        [AUTHDB, *args],
        env={**clean, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
