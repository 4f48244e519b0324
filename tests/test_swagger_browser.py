"""Swagger UI's Authorize in a real browser, for an application with authdb under ``/auth``.

A real uvicorn serves ``mounted_app`` (below) on 127.0.0.1; Debian's Chromium (Playwright)
opens its ``/docs``, signs in through the Authorize dialog (which posts to the token URL of
the OpenAPI security scheme) and calls ``GET /auth/users/me`` with "Try it out". Both
databases.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, ViewportSize, expect

from authdb import Auth, Settings
from authdb.http.routers import docs
from tests.cli import subprocess_env, wait_healthy
from tests.conftest import PASSWORD, free_port, pg_database

# The browser (``chromium``) comes from tests/browser.py.
pytest_plugins = ["tests.browser"]

T = TypeVar("T")

PREFIX = "/auth"
DESKTOP = ViewportSize(width=1280, height=800)
WAIT_MS = 15_000  # an upper bound for auto-waiting on a busy machine, not a timing


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code in a thread of its own (Playwright's sync API keeps an
    event loop marked as running in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def mounted_app() -> FastAPI:
    """The application under test (``uvicorn --factory``): authdb's API, pages and probes under
    ``/auth``, and authdb's offline Swagger UI at ``/docs``."""
    auth = Auth(Settings(), auto_migrate=True)
    app = FastAPI(title="My app", lifespan=auth.lifespan, docs_url=None, redoc_url=None)
    app.include_router(auth.pages_router, prefix=PREFIX)
    app.include_router(auth.router, prefix=PREFIX)
    app.include_router(auth.ops_router, prefix=PREFIX)
    docs.install(app)  # FastAPI's own /docs loads Swagger UI from a CDN

    return app


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``mounted_app`` under a real uvicorn on a fresh database; yields its base URL."""
    backend = str(request.param)
    workdir = tmp_path_factory.mktemp(f"swagger-{backend}")
    with ExitStack() as stack:
        if backend == "sqlite":
            database_url = f"sqlite+aiosqlite:///{workdir / 'app.db'}"
        else:
            database = pg_database()
            database_url = run_async(database.__aenter__())
            stack.callback(lambda: run_async(database.__aexit__(None, None, None)))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "AUTHDB_DATABASE_URL": database_url,
            "AUTHDB_SECRET_KEY": "swagger-test-secret-key-0123456789abcdefghij",
            "AUTHDB_PUBLIC_URL": base,
        }
        log_path = workdir / "uvicorn.log"
        log = stack.enter_context(log_path.open("w"))
        root = Path(__file__).resolve().parent.parent
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "tests.test_swagger_browser:mounted_app"),
                *("--factory", "--host", "127.0.0.1", "--port", str(port)),
            ],
            cwd=root,
            env={**subprocess_env(env), "PYTHONPATH": str(root)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, process)
        wait_healthy(base + PREFIX, process, log_path)
        yield base


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def page(chromium: Browser, server: str) -> Iterator[Page]:
    """A page in a fresh context that may only talk to ``server`` and must log no error."""
    foreign: list[str] = []
    console: list[str] = []
    origin = urlsplit(server)[:2]

    def guard(route: Route) -> None:
        if urlsplit(route.request.url)[:2] == origin:
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console.append(message.text)

    context = chromium.new_context(base_url=server, viewport=DESKTOP)
    context.set_default_timeout(WAIT_MS)
    context.route("**/*", guard)
    context.on("console", on_console)
    try:
        yield context.new_page()
    finally:
        context.close()
    assert not foreign, f"the page asked for other origins: {foreign}"
    assert not console, f"the browser logged errors: {console}"


def test_swagger_authorize_signs_in_under_the_prefix(server: str, page: Page) -> None:
    username = f"ada_{uuid.uuid4().hex[:10]}"
    registered = httpx.post(
        f"{server}{PREFIX}/register",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        timeout=30,
    )
    assert registered.status_code == 201, registered.text

    token_posts: list[str] = []
    page.on(
        "request",
        lambda r: token_posts.append(urlsplit(r.url).path) if r.method == "POST" else None,
    )
    page.goto("/docs")
    page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux .modal-ux")
    expect(dialog).to_be_visible()
    dialog.locator("#oauth_username").fill(username)
    dialog.locator("#oauth_password").fill(PASSWORD)
    dialog.locator(".auth-btn-wrapper button.authorize").click()
    # Signed in: the dialog offers to log out, and shows no error.
    expect(dialog.get_by_role("button", name="Remove authorization")).to_be_visible()
    expect(dialog.locator(".errors")).to_have_count(0)
    assert token_posts == [f"{PREFIX}/token"]
    dialog.get_by_role("button", name="Close").click()

    operation = page.locator(
        f'.opblock-get:has(.opblock-summary-path[data-path="{PREFIX}/users/me"])'
    ).first
    operation.locator(".opblock-summary").first.click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    live = operation.locator(".live-responses-table .response").first
    expect(live.locator(".response-col_status")).to_contain_text("200")
    expect(live.locator(".response-col_description")).to_contain_text(f'"username": "{username}"')


def test_the_token_url_is_the_prefixed_token_endpoint(server: str) -> None:
    schema = httpx.get(f"{server}/openapi.json", timeout=30).json()
    flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == f"{PREFIX}/token"
    assert os.path.basename(flows["password"]["tokenUrl"]) == "token"
