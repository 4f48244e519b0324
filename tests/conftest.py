"""Shared fixtures: real SQLite files, a real PostgreSQL database per test, a real SMTP server.

Every HTTP test runs on both backends through the parametrized ``database_url`` fixture.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.services import provisioning
from authdb.services.core import CLI_CLIENT
from tests.cli import FAST_HASHING

PG_ADMIN_DSN = os.environ.get("AUTHDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}"
        return
    async with pg_database() as url:
        yield url


class pg_database:
    """``async with pg_database() as url``: a throwaway PostgreSQL database."""

    def __init__(self) -> None:
        self.name = f"authdb_test_{uuid.uuid4().hex[:12]}"

    async def __aenter__(self) -> str:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.name}"

    async def __aexit__(self, *exc: object) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class Mailbox:
    """Messages delivered to the test's SMTP server."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def wait_for(self, count: int = 1, seconds: float = 10.0) -> list[EmailMessage]:
        """Wait until at least ``count`` messages have arrived."""
        for _ in range(int(seconds / 0.02)):
            if len(self.messages) >= count:
                return self.messages
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} message(s), got {len(self.messages)}")

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address.lower() in str(m["To"]).lower()]


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.box.messages.append(message)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    """A real SMTP server on loopback (aiosmtpd); yields its port and mailbox."""
    box = Mailbox()
    port = free_port()
    controller = Controller(_Handler(box), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


@pytest.fixture
def mailbox(smtp_server: tuple[int, Mailbox]) -> Mailbox:
    return smtp_server[1]


@pytest.fixture
def make_settings(database_url: str, smtp_server: tuple[int, Mailbox]) -> Callable[..., Settings]:
    """Settings for a test: its database and SMTP server, generous rate limits, no .env."""

    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "secret_key": "test-secret-key-that-is-long-enough-for-hs256-0123456789",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_server[0],
            "mail_from": "authdb <auth@example.com>",
            "public_url": "http://auth.example.test",
            "rate_limit_login_failures": "1000/minute",
            "rate_limit_register": "1000/minute",
            "rate_limit_email_requests": "1000/minute",
            "rate_limit_email_requests_per_address": "1000/minute",
            # A loaded test machine can take longer than the default 0.5 s to answer; the
            # outage tests set their own short timeouts.
            "redis_timeout_seconds": 5,
            # No pruning at a random one login in 100: what a test counts must not depend on
            # luck (the tests that prune ask for it).
            "prune_every_n_logins": 1_000_000,
            **FAST_HASHING,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return _make


@dataclass
class Harness:
    """An authdb app on a test database, with an HTTP client talking to it in-process."""

    auth: Auth
    client: httpx.AsyncClient

    async def create_user(
        self, username: str = "alice", password: str = PASSWORD, **fields: Any
    ) -> Any:
        fields.setdefault("email", f"{username}@example.com")
        fields.setdefault("is_verified", True)
        return await provisioning.create_user(
            self.auth.core, username=username, password=password, client=CLI_CLIENT, **fields
        )

    async def login(self, username: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post(
            "/token", data={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def bearer(self, username: str = "alice", password: str = PASSWORD) -> dict[str, str]:
        tokens = await self.login(username, password)
        return {"Authorization": f"Bearer {tokens['access_token']}"}


@pytest.fixture
async def make_harness(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """``await make_harness(**settings_overrides)``: started app + client, closed at teardown."""
    started: list[tuple[Auth, httpx.AsyncClient]] = []

    async def _make(**overrides: Any) -> Harness:
        auth = Auth(make_settings(**overrides))
        app = create_app(auth=auth)
        await migrate.upgrade(auth.core.engine)  # as `authdb migrate` would
        await auth.startup()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        started.append((auth, client))
        return Harness(auth, client)

    yield _make
    for auth, client in started:
        await client.aclose()
        await auth.shutdown()


@pytest.fixture
async def harness(make_harness: Callable[..., Awaitable[Harness]]) -> Harness:
    return await make_harness()
