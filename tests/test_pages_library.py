"""The pages in an application of one's own: ``auth.pages_router`` under a prefix, and the
session cookie on the application's own routes (with CSRF on unsafe methods)."""

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from authdb import Auth, Settings
from authdb.db import migrate
from authdb.db.models import User
from authdb.services import provisioning
from authdb.services.core import CLI_CLIENT
from tests.conftest import PASSWORD
from tests.test_pages import csrf_field


@pytest.fixture
async def app_client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    auth = Auth(make_settings())
    app = FastAPI(lifespan=auth.lifespan)
    app.include_router(auth.pages_router, prefix="/auth")
    app.include_router(auth.router, prefix="/auth")
    CurrentUser = Annotated[User, Depends(auth.current_active_user)]

    @app.get("/items")
    async def items(user: CurrentUser) -> dict[str, str]:
        return {"owner": user.username}

    @app.post("/items")
    async def add_item(user: CurrentUser) -> dict[str, str]:
        return {"added_by": user.username}

    await migrate.upgrade(auth.core.engine)
    async with app.router.lifespan_context(app):
        await provisioning.create_user(
            auth.core,
            username="alice",
            email="alice@example.com",
            password=PASSWORD,
            client=CLI_CLIENT,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=auth.settings.public_url) as c:
            yield c


async def test_pages_under_a_prefix_sign_a_browser_into_the_apps_own_routes(
    app_client: httpx.AsyncClient,
) -> None:
    client = app_client
    # Signed out, the account page sends the browser to the prefixed sign-in page.
    account = await client.get("/auth/account")
    assert account.status_code == 303
    assert account.headers["location"] == "/auth/login?next=/auth/account"
    login = await client.get("/auth/login")
    assert login.status_code == 200
    # Every link and form of the page points under the prefix.
    assert 'action="/auth/login"' in login.text
    assert 'href="/auth/assets/authdb.css"' in login.text
    assert (await client.get("/auth/assets/authdb.css")).status_code == 200
    signed_in = await client.post(
        "/auth/login",
        data={"csrf_token": csrf_field(login.text), "username": "alice", "password": PASSWORD},
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/auth/account"
    # The app's own routes now know the browser: GET needs only the cookie...
    assert (await client.get("/items")).json() == {"owner": "alice"}
    # ... an unsafe method also the CSRF header from the authdb_csrf cookie.
    refused = await client.post("/items")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "CSRF token missing or invalid"}
    csrf = client.cookies["authdb_csrf"]
    added = await client.post("/items", headers={"X-CSRF-Token": csrf})
    assert added.json() == {"added_by": "alice"}
