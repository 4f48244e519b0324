"""``/register``, ``/verify`` and ``/logout`` are API endpoints and page forms on one path: in
whichever order an app includes ``auth.router`` and ``auth.pages_router`` (the service puts the
API first, so that ``/users/me`` is found in a few steps), a browser's form post reaches the
page and a JSON or bearer request the API. Without the pages, a form post still reaches the API.
Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from authdb import Auth, Settings
from authdb.app import create_app

BASE = "http://auth.example.test"
FORM = {"content-type": "application/x-www-form-urlencoded"}
PATHS = ["/register", "/verify", "/logout"]

Client = Callable[[list[str]], Any]


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    """``await client(order)``: an app including the routers named in ``order`` ("api",
    "pages"), in that order."""
    async with AsyncExitStack() as stack:

        async def _client(order: list[str]) -> httpx.AsyncClient:
            auth = Auth(make_settings(), auto_migrate=True)
            app = FastAPI(lifespan=auth.lifespan)
            routers = {"api": auth.router, "pages": auth.pages_router}
            for name in order:
                app.include_router(routers[name])
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url=BASE)
            )

        yield _client


def _is_page(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/html")


@pytest.mark.parametrize("order", [["pages", "api"], ["api", "pages"]])
@pytest.mark.parametrize("path", PATHS)
async def test_a_form_post_reaches_the_page_whatever_the_order(
    client: Client, order: list[str], path: str
) -> None:
    http = await client(order)
    # No CSRF token: the page refuses it, as a page (not the API's JSON 422 or 401).
    response = await http.post(path, content="token=x&username=a", headers=FORM)
    assert _is_page(response), (response.status_code, response.text[:200])


@pytest.mark.parametrize("order", [["pages", "api"], ["api", "pages"]])
@pytest.mark.parametrize("path", PATHS)
async def test_json_and_bearer_requests_reach_the_api_whatever_the_order(
    client: Client, order: list[str], path: str
) -> None:
    http = await client(order)
    as_json = await http.post(path, json={})
    assert not _is_page(as_json)
    assert as_json.status_code in (401, 422), as_json.text
    assert "detail" in as_json.json()
    # A form body with a bearer token is an API call, whatever its content type.
    bearer = await http.post(path, content="a=b", headers={**FORM, "authorization": "Bearer x"})
    assert not _is_page(bearer)
    assert "detail" in bearer.json()


@pytest.mark.parametrize("path", PATHS)
async def test_without_pages_a_form_post_still_reaches_the_api(client: Client, path: str) -> None:
    http = await client(["api"])
    response = await http.post(path, content="a=b", headers=FORM)
    assert not _is_page(response)
    assert response.status_code in (401, 422), response.text
    assert "detail" in response.json()


def test_the_service_tries_the_api_first(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    first = app.router.routes[1]  # after FastAPI's /openapi.json
    assert getattr(first, "original_router", None) is app.state.auth.router
