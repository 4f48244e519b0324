"""authdb as a library mounted into an application of one's own (examples/app.py)."""

from __future__ import annotations

import importlib
from pathlib import Path

import httpx
import pytest

from authdb.services import provisioning
from authdb.services.core import CLI_CLIENT
from tests.conftest import PASSWORD


async def test_example_app_protects_its_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    monkeypatch.setenv("AUTHDB_SECRET_KEY", "example-secret-key-for-the-library-test-0123")
    example = importlib.reload(importlib.import_module("examples.app"))
    async with example.app.router.lifespan_context(example.app):
        await provisioning.create_user(
            example.auth.core, username="alice", email="alice@example.com", password=PASSWORD,
            client=CLI_CLIENT, is_verified=True,
        )  # fmt: skip
        transport = httpx.ASGITransport(app=example.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            anonymous = await client.get("/items")
            assert anonymous.status_code == 401
            assert anonymous.json() == {"detail": "Not authenticated"}
            forged = await client.get("/items", headers={"Authorization": "Bearer abc"})
            assert forged.status_code == 401
            assert forged.headers["www-authenticate"] == "Bearer"
            token = await client.post("/token", data={"username": "alice", "password": PASSWORD})
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            items = await client.get("/items", headers=headers)
            assert items.json()["owner"] == "alice"
            denied = await client.get("/admin/stats", headers=headers)
            assert denied.status_code == 403
            assert denied.json() == {"detail": "Not enough permissions"}
            wrong = await client.post("/token", data={"username": "alice", "password": "nope"})
            assert wrong.status_code == 401
