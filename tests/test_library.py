"""authdb as a library mounted into an application of one's own (examples/app.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from authdb import Auth, Settings, User
from authdb.http.dependencies import UserChangedOutsideAuthdb
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


async def test_an_app_route_returning_the_user_itself_never_sends_the_hash_and_its_errors_answer(
    make_settings: Callable[..., Settings],
) -> None:
    """FastAPI encodes a returned object with ``dict(obj)``: the injected user and
    ``auth.users.get`` give the public fields only, on both databases."""
    auth = Auth(make_settings(), auto_migrate=True)
    app = FastAPI(lifespan=auth.lifespan, exception_handlers=auth.exception_handlers)
    app.include_router(auth.router)
    current = Depends(auth.current_active_user)  # a local alias would not resolve (PEP 563)
    session = Depends(auth.db_session)

    @app.get("/me-raw", response_model=None)
    async def me_raw(user: User = current) -> Any:
        return user

    @app.get("/me-service", response_model=None)
    async def me_service(user: User = current) -> Any:
        return await auth.users.get(user.id)

    @app.post("/rename-myself")
    async def rename_myself(user: User = current, db: AsyncSession = session) -> dict[str, str]:
        user.full_name = "Mallory"  # wrong: bypasses auth.users
        await db.commit()
        return {}

    @app.post("/read-myself")
    async def read_myself(user: User = current, db: AsyncSession = session) -> dict[str, str]:
        again = await db.get(User, user.id)
        await db.commit()  # nothing changed: fine
        return {"same": str(again is user)}

    @app.delete("/users-by-id/{user_id}")
    async def delete_by_id(user_id: int, _user: User = current) -> dict[str, str]:
        await auth.users.delete(user_id)
        return {"deleted": str(user_id)}

    async with app.router.lifespan_context(app):
        await auth.users.create(
            username="alice", email="alice@example.com", password=PASSWORD, is_verified=True
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            token = await client.post("/token", data={"username": "alice", "password": PASSWORD})
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            for path in ("/me-raw", "/me-service"):
                body = (await client.get(path, headers=headers)).json()
                assert set(body) == set(User.PUBLIC_FIELDS), body
                assert body["username"] == "alice"
                assert "argon2" not in str(body)
            # The injected user joins the route's db_session, which never writes a user.
            same = await client.post("/read-myself", headers=headers)
            assert same.json() == {"same": "True"}
            with pytest.raises(UserChangedOutsideAuthdb, match=r"through auth\.users"):
                await client.post("/rename-myself", headers=headers)
            assert (await auth.users.get_by_login("alice")).full_name is None
            # auth.users' errors in the app's own route: auth.exception_handlers answers them.
            missing = await client.delete("/users-by-id/987654", headers=headers)
            assert missing.status_code == 404
            assert missing.json() == {"detail": "User not found"}
