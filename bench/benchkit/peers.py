"""The benchmark's own environment for the reference apps: ``bench/.peers-venv``.

fastapi-users 15 (with its SQLAlchemy adapter) and the tutorial app run there, never in
authdb's environment. The packages both sides share (FastAPI, uvicorn and its event loop and
HTTP parser, the database drivers, argon2-cffi, PyJWT) are pinned to the versions in authdb's
environment, so that the apps differ and the stack under them does not. SQLAlchemy and pwdlib
are left to fastapi-users' own bounds (its SQLAlchemy adapter wants SQLAlchemy 2.0). The venv
is made with the interpreter authdb's venv was made from, once; it is rebuilt only when the
wanted requirements change.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from benchkit.procs import BenchError

BENCH_DIR = Path(__file__).resolve().parent.parent
VENV = BENCH_DIR / ".peers-venv"
FASTAPI_USERS = "fastapi-users[sqlalchemy]==15.*"
# Shared with authdb's environment: pinned to the versions installed there.
SHARED = (
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "httptools",
    "aiosqlite",
    "asyncpg",
    "argon2-cffi",
    "argon2-cffi-bindings",
    "pyjwt",
    "python-multipart",
)
STAMP = VENV / ".bench-requirements"


def requirements() -> list[str]:
    pins = []
    for name in SHARED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return [FASTAPI_USERS, *pins]


def python() -> Path:
    return VENV / "bin" / "python"


def ensure(quiet: bool = True) -> Path:
    """The peers' interpreter, after creating or updating the venv if needed."""
    wanted = "\n".join(requirements()) + "\n"
    if python().exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return python()
    print(f"setting up {VENV} (fastapi-users 15 and the reference apps' stack)", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(VENV)])
    (VENV / ".gitignore").write_text("*\n")  # never committed
    pip = [str(python()), "-m", "pip", "install", "--disable-pip-version-check"]
    _run([*pip, *(["-q"] if quiet else []), *requirements()])
    STAMP.write_text(wanted)
    return python()


def versions() -> dict[str, str]:
    """Versions of the peers' main packages, as installed in the venv."""
    names = ["fastapi-users", "fastapi-users-db-sqlalchemy", "sqlalchemy", "pwdlib"]
    code = f"import importlib.metadata as m\nfor n in {names!r}:\n    print(n, m.version(n))\n"
    result = subprocess.run(
        [str(python()), "-c", code], capture_output=True, text=True, check=False
    )
    found = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(" ")
        found[name] = value
    return found


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(argv[:4])} ... failed:\n" + "\n".join(tail))
