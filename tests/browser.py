"""Real-browser fixtures: Debian's Chromium (Playwright, sync API) against a real `authdb serve`.

A pytest plugin for tests/test_pages_browser.py, loaded there with ``pytest_plugins`` (so that its
asserts are rewritten too); the tests reach the helpers through the ``site`` fixture.

Per test module and database backend: one `authdb serve` process, one SMTP server, one Chromium.
Per test: fresh browser contexts (no shared cookies), each of which may only talk to the server
(any other request is refused and fails the test) and must log no console error (a page breaking
its own Content-Security-Policy logs one).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Route,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.cli import AUTHDB, run_cli, subprocess_env, wait_healthy
from tests.conftest import PASSWORD, free_port, pg_database

CHROMIUM = "/usr/bin/chromium"  # Debian's; never `playwright install`
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SITE_NAME = "Example Accounts"
PHONE = ViewportSize(width=390, height=844)
DESKTOP = ViewportSize(width=1280, height=800)
WAIT_MS = 15_000  # an upper bound for auto-waiting on a busy 2-core machine, not a timing
ARTIFACTS = Path(
    os.environ.get("AUTHDB_TEST_ARTIFACTS")
    or Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
)

expect.set_options(timeout=WAIT_MS)

T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, in a thread of its own.

    Between its calls, Playwright's sync API leaves its own event loop marked as running in this
    thread, so ``asyncio.run`` here would refuse.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class Inbox:
    """Messages delivered to the module's SMTP server (aiosmtpd handler), waited on by condition."""

    def __init__(self) -> None:
        self.port = 0
        self._messages: list[EmailMessage] = []
        self._taken: set[int] = set()
        self._arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()
        return "250 OK"

    def link(self, to: str, path: str, seconds: float = 15.0) -> str:
        """The link to ``path?token=`` in the next message to ``to`` not looked at before."""
        pattern = re.compile(rf"https?://[^\s\"'<>]+{re.escape(path)}\?token=[A-Za-z0-9_\-]+")

        def find() -> str | None:
            for index, message in enumerate(self._messages):
                if index in self._taken or to.lower() not in str(message["To"]).lower():
                    continue
                body = message.get_body(preferencelist=("plain", "html"))
                found = pattern.search(body.get_content() if body is not None else "")
                if found:
                    self._taken.add(index)
                    return found.group(0)
            return None

        with self._arrived:
            link = self._arrived.wait_for(find, timeout=seconds)
        if link is None:
            subjects = [(str(m["To"]), str(m["Subject"])) for m in self._messages]
            raise AssertionError(f"no mail to {to} with a {path} link; mail so far: {subjects}")
        return link


@dataclass
class Site:
    """A running `authdb serve` with its mailbox, and the steps the tests take on it."""

    base: str
    backend: str
    inbox: Inbox
    log: Path

    def url(self, path: str) -> str:
        return self.base + path

    @staticmethod
    def new_username(stem: str = "user") -> str:
        """Unique per test: the tests of a module share one server."""
        return f"{stem}_{uuid.uuid4().hex[:10]}"

    # --- the API, straight (for set-up and for checking what the pages did) ---

    def create_user(self, username: str, password: str = PASSWORD) -> str:
        """Register through the API; returns the email address."""
        address = f"{username}@example.com"
        response = httpx.post(
            self.url("/register"),
            json={"username": username, "email": address, "password": password},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return address

    def token(self, login: str, password: str, user_agent: str | None = None) -> httpx.Response:
        headers = {"User-Agent": user_agent} if user_agent else {}
        return httpx.post(
            self.url("/token"),
            data={"username": login, "password": password},
            headers=headers,
            timeout=30,
        )

    def access_token(self, login: str, password: str, user_agent: str | None = None) -> str:
        response = self.token(login, password, user_agent)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def get(self, path: str, access_token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {access_token}"}
        return httpx.get(self.url(path), headers=headers, timeout=30)

    # --- the pages, through the browser ---

    @staticmethod
    def submit(page: Page, field_selector: str) -> None:
        """Click the submit button of the form that holds ``field_selector``."""
        form = page.locator("form").filter(has=page.locator(field_selector))
        form.locator("button[type=submit]").click()

    def sign_in(self, page: Page, login: str, password: str, next_url: str | None = None) -> None:
        """Fill and send the sign-in form (where it lands is for the test to check)."""
        page.goto("/login" + (f"?next={quote(next_url, safe='')}" if next_url else ""))
        page.get_by_label("Username or email").fill(login)
        page.locator("#password").fill(password)
        self.submit(page, "#password")

    def snap(self, page: Page, name: str) -> None:
        """Check the page's basics, then save full-page screenshots at phone and desktop size.

        Basics: titled with the site name, every shown field labelled and every button named, a
        phone viewport declared, and nothing wider than a phone's 390 px.
        """
        assert SITE_NAME in page.title(), f"{name}: title {page.title()!r}"
        unlabelled = page.evaluate(_UNLABELLED)
        assert not unlabelled, f"{name}: fields or buttons without a label: {unlabelled}"
        viewport = page.locator("meta[name=viewport]")
        expect(viewport).to_have_attribute("content", re.compile(r"width=device-width"))
        original = page.viewport_size
        try:
            for size in (PHONE, DESKTOP):
                page.set_viewport_size(size)
                if size is PHONE:
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= PHONE["width"], f"{name}: {width} px wide on a phone"
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                target = ARTIFACTS / f"{name}-{self.backend}-{size['width']}x{size['height']}.png"
                page.screenshot(path=target, full_page=True)
        finally:
            if original is not None:
                page.set_viewport_size(original)

    def snap_part(self, page: Page, selector: str, name: str) -> None:
        """Screenshots of one part of the page (``selector``) at phone and desktop size."""
        original = page.viewport_size
        try:
            for size in (PHONE, DESKTOP):
                page.set_viewport_size(size)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                target = ARTIFACTS / f"{name}-{self.backend}-{size['width']}x{size['height']}.png"
                page.locator(selector).screenshot(path=target)
        finally:
            if original is not None:
                page.set_viewport_size(original)


_UNLABELLED = """() => {
  const shown = el => !el.closest('[hidden], [aria-hidden=true]');
  const fields = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(shown)
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !el.getAttribute('aria-labelledby'))
    .map(el => 'field ' + (el.id || el.name));
  const buttons = [...document.querySelectorAll('button')].filter(shown)
    .filter(el => !el.textContent.trim() && !el.getAttribute('aria-label'))
    .map(el => 'button ' + el.outerHTML);
  return fields.concat(buttons);
}"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One Chromium for the module's tests.

    Module-scoped, not session-scoped: Playwright's sync API leaves its event loop marked as
    running in the main thread while it is started, and every async test run after it (other
    modules) would then fail with "Cannot run the event loop while another loop is running".
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page_mail() -> Iterator[Inbox]:
    """A real SMTP server on loopback (aiosmtpd) shared by the module's tests."""
    inbox = Inbox()
    inbox.port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def site_host(request: pytest.FixtureRequest) -> str:
    """The host of ``site``'s URLs and its ``AUTHDB_PUBLIC_URL``: ``127.0.0.1`` by default.

    A test module may override this fixture (passkeys need a domain name: ``localhost``), and a
    test may parametrize it indirectly; ``site`` then starts a server of its own for that host.
    """
    return str(getattr(request, "param", "127.0.0.1"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    page_mail: Inbox,
    site_host: str,
) -> Iterator[Site]:
    """The real `authdb serve` on a fresh database of each backend, mailing to ``page_mail``."""
    backend = str(request.param)
    workdir = tmp_path_factory.mktemp(f"serve-{backend}")
    with ExitStack() as stack:
        database_url = fresh_database(stack, backend, workdir)
        port = free_port()
        base = f"http://{site_host}:{port}"
        env = {
            "AUTHDB_DATABASE_URL": database_url,
            "AUTHDB_SECRET_KEY": "browser-test-secret-key-0123456789abcdefghij",
            "AUTHDB_SMTP_HOST": "127.0.0.1",
            "AUTHDB_SMTP_PORT": str(page_mail.port),
            "AUTHDB_MAIL_FROM": "authdb <auth@example.com>",
            "AUTHDB_PUBLIC_URL": base,
            "AUTHDB_SITE_NAME": SITE_NAME,
            # The module's tests share this server and its one client address.
            "AUTHDB_RATE_LIMIT_LOGIN_FAILURES": "1000/minute",
            "AUTHDB_RATE_LIMIT_REGISTER": "1000/minute",
            "AUTHDB_RATE_LIMIT_EMAIL_REQUESTS": "1000/minute",
            "AUTHDB_RATE_LIMIT_EMAIL_REQUESTS_PER_ADDRESS": "1000/minute",
        }
        log_path = start_serve(stack, backend, workdir, env, base)
        yield Site(base=base, backend=backend, inbox=page_mail, log=log_path)


def fresh_database(stack: ExitStack, backend: str, workdir: Path) -> str:
    """The URL of a new database of ``backend`` ("sqlite": a file in ``workdir``;
    "postgresql": one dropped when ``stack`` closes)."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{workdir / 'authdb.db'}"
    database = pg_database()
    url = run_async(database.__aenter__())
    stack.callback(lambda: run_async(database.__aexit__(None, None, None)))
    return url


def start_serve(
    stack: ExitStack, backend: str, workdir: Path, env: dict[str, str], base: str
) -> Path:
    """Run `authdb serve` at ``base`` (its port) with ``env`` until ``stack`` closes, once it
    answers; returns its log file. A PostgreSQL database is migrated first (serve migrates
    SQLite itself; other databases must be current)."""
    if backend != "sqlite":
        migrated = run_cli(["migrate"], env=env)
        assert migrated.returncode == 0, migrated.stderr
    log_path = workdir / "serve.log"
    log = stack.enter_context(log_path.open("w"))
    port = str(urlsplit(base).port)
    process = subprocess.Popen(
        [AUTHDB, "serve", "--port", port],
        cwd=workdir,
        env=subprocess_env(env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.callback(_stop, process)
    wait_healthy(base, process, log_path)
    return log_path


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def new_context(chromium: Browser, site: Site) -> Iterator[Callable[[], BrowserContext]]:
    """``new_context()``: a fresh browser context on ``site``; all are closed and checked after.

    Requests to any other origin are aborted and fail the test; so does a console error.
    """
    parts = urlsplit(site.base)
    with guarded_contexts(chromium, site.base, {f"{parts.scheme}://{parts.netloc}"}) as new:
        yield new


@contextmanager
def guarded_contexts(
    chromium: Browser, base: str, origins: set[str]
) -> Iterator[Callable[[], BrowserContext]]:
    """``new()`` opens a browser context on ``base``; on leaving, all are closed, and the test
    fails if a page asked for an origin outside ``origins`` (aborted) or logged an error."""
    opened: list[BrowserContext] = []
    foreign: list[str] = []
    console: list[str] = []

    def guard(route: Route) -> None:
        parts = urlsplit(route.request.url)
        if f"{parts.scheme}://{parts.netloc}" in origins:
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    def on_console(message: ConsoleMessage) -> None:
        # A page answered 4xx/5xx (a refused form, on purpose) logs "Failed to load resource".
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            console.append(f"{message.page.url if message.page else '?'}: {message.text}")

    def new() -> BrowserContext:
        context = chromium.new_context(base_url=base, viewport=DESKTOP)
        context.set_default_timeout(WAIT_MS)
        context.route("**/*", guard)
        context.on("console", on_console)
        context.on("weberror", lambda error: console.append(f"uncaught: {error.error}"))
        opened.append(context)
        return context

    yield new
    for context in opened:
        context.close()
    assert not foreign, f"the pages asked for other origins: {foreign}"
    assert not console, f"the browser logged errors: {console}"


@pytest.fixture
def page(new_context: Callable[[], BrowserContext]) -> Page:
    """A page in a fresh browser context."""
    return new_context().new_page()
