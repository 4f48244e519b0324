"""Helpers for the tests of CSV exports from other systems (tests/test_import_fastapi_users.py,
tests/test_import_supabase.py): the export commands the README gives, run for real (psql's
``\\copy``, the sqlite3 shell), the line each record starts on, and what authdb stored."""

from __future__ import annotations

import asyncio
import csv
import io
import shlex
import subprocess
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import func, select

from authdb import Auth
from authdb.db.models import User

# authdb's hash after a first right password, with the suite's fast parameters (tests/cli.py).
UPGRADED_PREFIX = "$argon2id$v=19$m=1024,t=1,p=1$"


def libpq_url(url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy's form) as psql takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def shell(command: str, cwd: Path) -> str:
    """Run ``command`` as a person would type it (a shell, in ``cwd``); its stdout."""
    result = subprocess.run(  # noqa: S602 - the README's commands, with a shell's redirection
        command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def psql(url: str, command: str, cwd: Path, *options: str) -> str:
    """``psql "<url>" [options] -c "<command>"`` in ``cwd`` (where ``\\copy`` writes)."""
    extra = "".join(f" {option}" for option in options)
    return shell(f"psql {shlex.quote(libpq_url(url))}{extra} -c {shlex.quote(command)}", cwd)


def physical_lines(text: str) -> list[str]:
    """``text``'s lines as a CSV reader counts them (``\\n``, ``\\r\\n`` and ``\\r`` end one)."""
    return list(io.StringIO(text, newline=""))


def line_starting(text: str, prefix: str) -> int:
    """The number (from 1) of the one line of ``text`` that starts with ``prefix``."""
    found = [n for n, line in enumerate(physical_lines(text), 1) if line.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


def csv_table(text: str) -> tuple[list[str], list[list[str]]]:
    """A CSV export's header and rows (to build altered copies of a real export)."""
    header, *rows = csv.reader(io.StringIO(text, newline=""))
    return header, rows


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def id_map(path: Path) -> dict[str, dict[str, str]]:
    """``--id-map``'s CSV as {source_id: row}."""
    with path.open(newline="", encoding="utf-8") as source:
        return {row["source_id"]: row for row in csv.DictReader(source)}


async def stored(auth: Auth, login: str) -> User:
    """The user authdb holds under ``login``, read afresh."""
    return await auth.users.get_by_login(login)


async def token_response(client: httpx.AsyncClient, login: str, password: str) -> httpx.Response:
    return await client.post("/token", data={"username": login, "password": password})


async def user_count(auth: Auth) -> int:
    async with auth.core.sessionmaker() as db:
        count: Any = await db.scalar(select(func.count()).select_from(User))
    return int(count)


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """A refused import's stderr, one entry a line; it must have failed without a traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()


T = TypeVar("T")


def in_own_loop(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` in an event loop of its own, in a thread: for module-scoped fixtures, which
    outlive the tests' function-scoped loops."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()
