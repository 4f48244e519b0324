"""`authdb doctor`: one line per check, exit 1 on any error, nothing written anywhere.

Run in-process with Typer's runner against real databases, the real Redis on 127.0.0.1:6379 and
a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import text
from typer.testing import CliRunner

from authdb.cli.main import app
from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.doctor import CHECKS, examine
from authdb.doctor.configuration import weakness
from authdb.settings import Settings
from tests.conftest import Mailbox, free_port, pg_database

# Random-looking, fixed (a random key could, once in a long while, look weak).
KEY = "Zq3v9XkP2mR8tL5wN7bH4cJ6dF1gS0yE-uA_"
NAMES = [name for name, _ in CHECKS]


def _migrate(url: str) -> None:
    async def _run() -> None:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(_run())


def _execute(url: str, statement: str) -> None:
    async def _run() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(_run())


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A migrated database of each backend, shared by the module (the doctor only reads)."""
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('doctor') / 'authdb.db'}"
    _migrate(sqlite_url)
    database = pg_database()
    pg_url = asyncio.run(database.__aenter__())
    try:
        _migrate(pg_url)
        yield {"sqlite": sqlite_url, "postgresql": pg_url}
    finally:
        asyncio.run(database.__aexit__(None, None, None))


def healthy(database_url: str, smtp_port: int) -> dict[str, str]:
    """A deployment every check passes: https, a strong key, Redis and SMTP that answer."""
    return {
        "AUTHDB_DATABASE_URL": database_url,
        "AUTHDB_SECRET_KEY": KEY,
        "AUTHDB_PUBLIC_URL": "https://auth.example.com",
        "AUTHDB_SMTP_HOST": "127.0.0.1",
        "AUTHDB_SMTP_PORT": str(smtp_port),
        "AUTHDB_REDIS_URL": "redis://127.0.0.1:6379/0",
        "AUTHDB_REDIS_KEY_PREFIX": f"doctor-{uuid.uuid4().hex}",
        "AUTHDB_TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8",
    }


class Run:
    """One ``authdb doctor`` run: exit code, output lines and each check's status."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        # Only the test's settings: none from this process's environment.
        cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHDB_")}
        result = CliRunner().invoke(app, ["doctor", *args], env={**cleared, **env})
        assert result.exception is None or isinstance(result.exception, SystemExit), result
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.lines = result.stdout.splitlines()
        self.status = {
            line[7:].split(":", 1)[0]: line[:7].strip() for line in self.lines[: len(NAMES)]
        }

    def line(self, name: str) -> str:
        return next(line for line in self.lines if line[7:].startswith(f"{name}:"))

    def problems(self) -> dict[str, str]:
        """The checks that are not ok, with their status."""
        return {name: status for name, status in self.status.items() if status != "ok"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_healthy_deployment_is_all_ok(
    backend: str, databases: dict[str, str], smtp_server: tuple[int, Mailbox]
) -> None:
    run = Run(healthy(databases[backend], smtp_server[0]))
    assert run.exit_code == 0, run.stdout
    assert list(run.status) == NAMES
    assert run.problems() == {}, run.stdout
    assert run.lines[-1] == f"{len(NAMES)} checks: {len(NAMES)} ok"
    assert run.line("schema").endswith(f"(revision {migrate.head_revision()})")
    expected = (
        "ok     database: PostgreSQL " if backend == "postgresql" else "ok     database: SQLite"
    )
    assert run.line("database").startswith(expected)
    assert KEY not in run.stdout
    assert smtp_server[1].messages == []  # connected, greeted, never sent

    as_json = Run(healthy(databases[backend], smtp_server[0]), "--json")
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert [check["name"] for check in report["checks"]] == NAMES
    assert {check["status"] for check in report["checks"]} == {"ok"}


@pytest.mark.parametrize(
    ("overrides", "problems"),
    [
        pytest.param(
            {"AUTHDB_REDIS_URL": f"redis://:hunter2pass@127.0.0.1:{free_port()}/0"},
            {"redis": "error"},
            id="redis-unreachable",
        ),
        pytest.param({"AUTHDB_SMTP_PORT": str(free_port())}, {"smtp": "error"}, id="smtp-down"),
        pytest.param({"AUTHDB_SMTP_HOST": ""}, {"smtp": "warn"}, id="smtp-unset"),
        pytest.param({"AUTHDB_REDIS_URL": ""}, {}, id="redis-unset"),
        pytest.param(
            {"AUTHDB_PUBLIC_URL": "http://auth.example.com"},
            {"public URL": "error", "cookies": "error", "passkeys": "warn"},
            id="http-public-host",
        ),
        pytest.param({"AUTHDB_PUBLIC_URL": "http://localhost:8000"}, {}, id="http-localhost"),
        pytest.param(
            {"AUTHDB_PUBLIC_URL": "http://auth.example.com", "AUTHDB_PAGES_ENABLED": "false"},
            {"public URL": "error", "passkeys": "warn"},
            id="http-no-pages",
        ),
        pytest.param(
            {"AUTHDB_PUBLIC_URL": "https://203.0.113.5"}, {"passkeys": "warn"}, id="ip-host"
        ),
        pytest.param(
            {"AUTHDB_SECRET_KEY": "change-me-to-a-long-random-string-please"},
            {"secret key": "error"},
            id="placeholder-key",
        ),
        pytest.param({"AUTHDB_SECRET_KEY": "a" * 40}, {"secret key": "error"}, id="one-char-key"),
        pytest.param(
            {"AUTHDB_SECRET_KEY": "0123456789abcdefXYZ!" * 2},
            {"secret key": "error"},
            id="repeated-key",
        ),
        pytest.param(
            {"AUTHDB_TRUSTED_PROXIES": "0.0.0.0/0"}, {"trusted proxies": "warn"}, id="all-v4"
        ),
        pytest.param({"AUTHDB_TRUSTED_PROXIES": "::/0"}, {"trusted proxies": "warn"}, id="all-v6"),
        pytest.param(
            {"AUTHDB_TRUSTED_PROXIES": "10.0.0.1,8.8.8.0/24"},
            {"trusted proxies": "warn"},
            id="public-network",
        ),
        pytest.param({"AUTHDB_TRUSTED_PROXIES": ""}, {}, id="no-proxies"),
    ],
)
def test_each_problem_is_named_and_errors_fail(
    overrides: dict[str, str],
    problems: dict[str, str],
    databases: dict[str, str],
    smtp_server: tuple[int, Mailbox],
) -> None:
    run = Run({**healthy(databases["sqlite"], smtp_server[0]), **overrides})
    assert run.problems() == problems, run.stdout
    assert run.exit_code == (1 if "error" in problems.values() else 0), run.stdout
    for secret in ("hunter2pass", overrides.get("AUTHDB_SECRET_KEY", KEY)):
        assert secret not in run.stdout


def test_messages_say_what_is_wrong(
    databases: dict[str, str], smtp_server: tuple[int, Mailbox]
) -> None:
    env = healthy(databases["sqlite"], smtp_server[0])
    http = Run({**env, "AUTHDB_PUBLIC_URL": "http://auth.example.com"})
    assert http.line("public URL").startswith(
        "error  public URL: AUTHDB_PUBLIC_URL http://auth.example.com is not https outside loopback"
    )
    assert "without Secure" in http.line("cookies")
    ip = Run({**env, "AUTHDB_PUBLIC_URL": "https://203.0.113.5"})
    assert "off: AUTHDB_PUBLIC_URL's host 203.0.113.5 is an IP address" in ip.line("passkeys")
    everyone = Run({**env, "AUTHDB_TRUSTED_PROXIES": "0.0.0.0/0"})
    assert "forge X-Forwarded-For" in everyone.line("trusted proxies")
    redis = Run({**env, "AUTHDB_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert "(AUTHDB_REDIS_URL) not reachable" in redis.line("redis")
    assert redis.lines[-1] == f"{len(NAMES)} checks: 1 error, {len(NAMES) - 1} ok"


def test_missing_extras_are_named(
    databases: dict[str, str], smtp_server: tuple[int, Mailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import x` fail as if the package were not installed.
    for module in ("webauthn", "prometheus_client", "redis"):
        monkeypatch.setitem(sys.modules, module, None)
    env = {**healthy(databases["sqlite"], smtp_server[0]), "AUTHDB_METRICS_ENABLED": "true"}
    run = Run(env)
    assert run.problems() == {"passkeys": "warn", "metrics": "error", "redis": "error"}
    assert run.exit_code == 1
    assert run.line("passkeys").endswith("off: pip install 'authdb[passkeys]'")
    assert "pip install 'authdb[metrics]'" in run.line("metrics")
    assert "pip install 'authdb[redis]'" in run.line("redis")


@pytest.fixture
def smtp_with_login() -> Iterator[int]:
    """A real SMTP server (aiosmtpd) that accepts only doctor / right-password, over plain
    text (no TLS on loopback); yields its port."""

    def authenticate(
        server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        good = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"doctor",
            b"right-password",
        )
        # handled=False: aiosmtpd answers 535 itself (True would leave the client waiting).
        return AuthResult(success=good, handled=False)

    port = free_port()
    controller = Controller(
        object(),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def test_smtp_login(databases: dict[str, str], smtp_with_login: int) -> None:
    env = {
        **healthy(databases["sqlite"], smtp_with_login),
        "AUTHDB_SMTP_USERNAME": "doctor",
        "AUTHDB_SMTP_PASSWORD": "right-password",
    }
    run = Run(env)
    assert run.problems() == {}, run.stdout
    assert run.line("smtp").endswith("answers (EHLO, login as doctor)")
    wrong = Run({**env, "AUTHDB_SMTP_PASSWORD": "wrong-password"})
    assert wrong.problems() == {"smtp": "error"}
    assert wrong.exit_code == 1
    assert "535" in wrong.line("smtp") and "(AUTHDB_SMTP_HOST, AUTHDB_SMTP_PORT)" in wrong.line(
        "smtp"
    )
    assert "wrong-password" not in wrong.stdout


def test_unreachable_database_port(smtp_server: tuple[int, Mailbox]) -> None:
    url = f"postgresql+asyncpg://postgres:hunter2pass@127.0.0.1:{free_port()}/test"
    run = Run(healthy(url, smtp_server[0]))
    assert run.exit_code == 1
    assert run.problems() == {
        "database": "error",
        "schema": "skip",
        "clock": "skip",
        "connections": "skip",
    }
    assert run.line("database").startswith("error  database: 127.0.0.1:")
    assert "(AUTHDB_DATABASE_URL) not reachable" in run.line("database")
    assert "hunter2pass" not in run.stdout


def test_missing_sqlite_file_is_reported_and_not_created(
    tmp_path: Path, smtp_server: tuple[int, Mailbox]
) -> None:
    path = tmp_path / "authdb.db"
    run = Run(healthy(f"sqlite+aiosqlite:///{path}", smtp_server[0]))
    assert run.exit_code == 1
    assert run.problems() == {"database": "error", "schema": "skip", "clock": "skip"}
    assert "does not exist: `authdb migrate` creates it" in run.line("database")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_database(tmp_path: Path, smtp_server: tuple[int, Mailbox]) -> None:
    path = tmp_path / "authdb.db"
    path.write_bytes(b"not a database, just some bytes " * 64)
    run = Run(healthy(f"sqlite+aiosqlite:///{path}", smtp_server[0]))
    assert run.problems() == {"database": "error", "schema": "skip", "clock": "skip"}
    assert "not a database" in run.line("database")


async def test_schema_and_generated_key_from_empty_to_current(
    database_url: str, smtp_server: tuple[int, Mailbox]
) -> None:
    if database_url.startswith("sqlite"):  # a SQLite file, but not authdb's
        path = Path(database_url.split("///", 1)[1])
        sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    env = healthy(database_url, smtp_server[0])
    del env["AUTHDB_SECRET_KEY"]
    # In a thread: the command runs an event loop of its own.
    empty = await asyncio.to_thread(Run, env)
    assert empty.problems() == {"schema": "error", "secret key": "warn"}
    assert empty.exit_code == 1
    assert "run `authdb migrate`" in empty.line("schema")

    await asyncio.to_thread(_migrate, database_url)
    current = await asyncio.to_thread(Run, env)
    assert current.exit_code == 0
    assert current.problems() == {"secret key": "warn"}
    assert "no key generated yet" in current.line("secret key")

    stored = "INSERT INTO authdb_meta (key, value) VALUES ('secret_key', 'generated-xyz')"
    await asyncio.to_thread(_execute, database_url, stored)
    generated = await asyncio.to_thread(Run, env)
    assert generated.exit_code == 0
    assert generated.line("secret key") == (
        "warn   secret key: AUTHDB_SECRET_KEY unset; "
        "using the key generated and kept in the database"
    )
    assert "generated-xyz" not in generated.stdout


async def test_clock_disagreeing_with_postgresql(databases: dict[str, str]) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=databases["postgresql"],
        secret_key=KEY,
    )

    async def clock_status(offset: timedelta) -> tuple[str, str]:
        results = await examine(settings, clock=lambda: datetime.now(UTC) + offset)
        clock = next(result for result in results if result.name == "clock")
        return clock.status, clock.message

    assert (await clock_status(timedelta(0)))[0] == "ok"
    status, message = await clock_status(timedelta(seconds=10))
    assert status == "warn"
    assert "ahead of the database's" in message
    status, message = await clock_status(timedelta(minutes=-2))
    assert status == "error"
    assert "behind the database's" in message


def test_invalid_settings_are_one_line() -> None:
    run = Run({"AUTHDB_SECRET_KEY": "short"})
    assert run.exit_code == 1
    assert run.stdout == ""
    assert run.stderr.strip() == (
        "error: invalid settings: AUTHDB_SECRET_KEY: must be at least 32 characters long"
    )


@pytest.mark.parametrize(
    "key",
    [
        "Zq3v9XkP2mR8tL5wN7bH4cJ6dF1gS0yE",
        "3f9a1c07be52d86e4b1f0a9c7d3e2b58",  # 32 hex digits
        "q1ZdJ4nR7vKp0tXw2yB8mC5hF6gL9sAeUoIiEr-_Ty3xNbVz",
    ],
)
def test_random_keys_are_not_weak(key: str) -> None:
    assert weakness(key) is None
