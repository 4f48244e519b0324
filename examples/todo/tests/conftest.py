"""Fixtures of the todo app's tests: its database (SQLite or PostgreSQL), a real SMTP server,
the real ``authdb migrate`` and ``alembic`` commands, and the app served by a real uvicorn.

Self-contained, as a real application's tests would be: nothing here comes from authdb's own
test suite. The app runs in its own process, as in production; that also keeps its models out
of this process (they join authdb's ``Base.metadata``, which authdb's own tests read).
``TODO_TEST_PG_DSN`` (or ``AUTHDB_TEST_PG_DSN``) names another PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text

from authdb.db.engine import create_engine

TODO_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TODO_DIR.parent.parent
ALEMBIC_INI = TODO_DIR / "alembic.ini"
PG_ADMIN_DSN = os.environ.get(
    "TODO_TEST_PG_DSN",
    os.environ.get("AUTHDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
)
PASSWORD = "correct horse battery staple"
_names = itertools.count(1)


def unique(name: str) -> str:
    """A username no other test of the module's shared server uses."""
    return f"{name}{next(_names)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- databases ----------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@dataclass
class Database:
    """An empty database, made for a test (or a module) and removed after it."""

    kind: str
    folder: Path
    name: str = field(default_factory=lambda: f"todo_test_{uuid.uuid4().hex[:12]}")

    @property
    def url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite+aiosqlite:///{self.folder / 'todo.db'}"
        server = PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
        return f"postgresql+asyncpg://{server}/{self.name}"

    def __enter__(self) -> Database:
        if self.kind == "postgresql":
            asyncio.run(_pg_admin(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "postgresql":
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database for one test."""
    with Database(request.param, tmp_path) as db:
        yield db


async def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of one SQL statement (committed), read the way an operator would."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    rows = await query(
        url,
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if url.startswith("sqlite")
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
    )
    return {row[0] for row in rows}


# --- mail ---------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What the test's SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in str(m["To"])]

    async def wait_for(self, address: str, count: int, seconds: float = 20.0) -> None:
        """Until ``count`` messages to ``address`` have arrived (AssertionError after
        ``seconds``)."""
        deadline = time.monotonic() + seconds
        while len(self.to(address)) < count:
            if time.monotonic() > deadline:
                subjects = [m["Subject"] for m in self.to(address)]
                raise AssertionError(f"expected {count} message(s) to {address}: {subjects}")
            await asyncio.sleep(0.05)

    def one(self, address: str, subject_starts: str) -> EmailMessage:
        """The single message to ``address`` whose subject starts with ``subject_starts``."""
        found = [m for m in self.to(address) if str(m["Subject"]).startswith(subject_starts)]
        assert len(found) == 1, [m["Subject"] for m in self.to(address)]
        return found[0]


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.box.messages.append(message)
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, Mailbox]]:
    """A real SMTP server (aiosmtpd) on loopback: its port and mailbox."""
    box = Mailbox()
    port = free_port()
    controller = Controller(_Handler(box), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


# --- the commands -------------------------------------------------------------------------


def environment(database_url: str, smtp_port: int, public_url: str) -> dict[str, str]:
    """The app's configuration, authdb's ``AUTHDB_*`` variables (none inherited from the
    machine's environment); cheap password hashing and generous rate limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHDB_")}
    env.update(
        AUTHDB_DATABASE_URL=database_url,
        AUTHDB_SECRET_KEY="todo-example-secret-key-for-tests-0123456789abcdef",
        AUTHDB_PUBLIC_URL=public_url,
        AUTHDB_SMTP_HOST="127.0.0.1",
        AUTHDB_SMTP_PORT=str(smtp_port),
        AUTHDB_MAIL_FROM="Todos <hello@todo.test>",
        AUTHDB_PASSWORD_HASH_TIME_COST="1",
        AUTHDB_PASSWORD_HASH_MEMORY_KIB="1024",
        AUTHDB_PASSWORD_HASH_PARALLELISM="1",
        AUTHDB_RATE_LIMIT_REGISTER="1000/minute",
        AUTHDB_RATE_LIMIT_LOGIN_FAILURES="1000/minute",
    )
    return env


def command(name: str) -> str:
    """A console script of this interpreter's environment (``authdb``, ``alembic``)."""
    return str(Path(sys.executable).with_name(name))


@dataclass
class Shell:
    """Runs the commands of the README with the app's environment, from a folder of the
    test's own (so no ``.env`` file is read)."""

    env: dict[str, str]
    cwd: Path

    def run(
        self, args: list[str], *, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 (this environment's own authdb and alembic)
            args, input=stdin, capture_output=True, text=True, timeout=180, cwd=self.cwd,
            env=self.env, check=False,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result

    def authdb(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``authdb ARGS``, e.g. ``authdb migrate``."""
        return self.run([command("authdb"), *args], **kw)

    def alembic(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``alembic -c examples/todo/alembic.ini ARGS``: the app's own migrations."""
        return self.run([command("alembic"), "-c", str(ALEMBIC_INI), *args], **kw)


@dataclass
class Server:
    """``uvicorn examples.todo.app:app`` on loopback."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(shell: Shell, port: int, *, wait: bool = True) -> Server:
    """Start the app as the README says; with ``wait``, return once it answers HTTP."""
    log = shell.cwd / f"uvicorn-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [
                command("uvicorn"), "examples.todo.app:app", "--app-dir", str(REPO_ROOT),
                "--host", "127.0.0.1", "--port", str(port),
            ],
            cwd=shell.cwd, env=shell.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", log)
    if not wait:
        return server
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the app exited ({process.returncode}):\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/todos", timeout=2).status_code == 401:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the app did not start:\n{server.output()}")
        time.sleep(0.1)


# --- the app, for the module's tests ------------------------------------------------------


@dataclass
class TodoApp:
    """The running app (one per module and database), and what it needs."""

    server: Server
    shell: Shell
    database_url: str
    mailbox: Mailbox


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def todo_app(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    smtp: tuple[int, Mailbox],
) -> Iterator[TodoApp]:
    """The README's steps on a new database, then the app served by uvicorn."""
    folder = tmp_path_factory.mktemp(f"todo-{request.param}")
    port = free_port()
    with Database(request.param, folder) as db:
        shell = Shell(environment(db.url, smtp[0], f"http://127.0.0.1:{port}"), folder)
        shell.authdb("migrate")
        shell.alembic("upgrade", "head")
        server = start_server(shell, port)
        try:
            yield TodoApp(server, shell, db.url, smtp[1])
        finally:
            server.stop()


@dataclass
class Client:
    """An HTTP client of the running app, with the app's sign-up and sign-in steps."""

    http: httpx.AsyncClient
    app: TodoApp

    async def register(self, username: str, **body: Any) -> dict[str, Any]:
        body = {"username": username, "email": f"{username}@example.com", **body}
        response = await self.http.post("/auth/register", json={"password": PASSWORD, **body})
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def bearer(self, username: str) -> dict[str, str]:
        response = await self.http.post(
            "/auth/token", data={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
async def client(todo_app: TodoApp) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=todo_app.server.url, timeout=30) as http:
        yield Client(http, todo_app)


@pytest.fixture
def shell(database: Database, smtp: tuple[int, Mailbox], tmp_path: Path) -> Shell:
    """The commands, configured for a fresh empty database (the migration tests)."""
    return Shell(environment(database.url, smtp[0], "http://127.0.0.1:8000"), tmp_path)
