"""Hosted pages over HTTP (no browser): headers, cookies, sessions, lockout, emailed links.

Every test runs on SQLite and PostgreSQL (``database_url``). The helpers here (``Site``,
``Browser``, ``make_site``) are shared with tests/test_csrf.py and tests/test_redirects.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.db.models import AuthSession, RefreshToken, User
from authdb.services import provisioning
from authdb.services.audit import list_events
from authdb.services.core import CLI_CLIENT
from authdb.services.users import find_by_login
from tests.conftest import PASSWORD, Mailbox

WRONG = "not the right password"
NEW_PASSWORD = "a brand new passphrase 42"
CSRF_REFUSED = "CSRF token missing or invalid"
CHROME_ON_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
_LINK = re.compile(r"https?://[^\s\"<>]+/(verify|reset-password)\?token=([A-Za-z0-9_\-]+)")


# -- helpers shared by the page test files ------------------------------------------------


def csrf_field(html: str) -> str:
    """The csrf_token hidden field of the (first) form on a page."""
    found = _CSRF_FIELD.search(html)
    assert found, html[:2000]
    return found.group(1)


@dataclass(frozen=True)
class SetCookie:
    name: str
    value: str
    attributes: dict[str, str]  # lower-cased names; flags map to ""


def set_cookies(response: httpx.Response) -> dict[str, SetCookie]:
    """The response's Set-Cookie headers by cookie name."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        first, *rest = (part.strip() for part in header.split(";"))
        name, _, value = first.partition("=")
        attributes = {}
        for part in rest:
            key, _, val = part.partition("=")
            attributes[key.strip().lower()] = val.strip()
        found[name] = SetCookie(name, value, attributes)
    return found


def link_token(message: EmailMessage, kind: str) -> str:
    """The token of the ``/verify`` or ``/reset-password`` link in an email."""
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = [m.group(2) for m in _LINK.finditer(body.get_content()) if m.group(1) == kind]
    assert found, body.get_content()
    return found[0]


def post_form(
    client: httpx.AsyncClient, path: str, data: dict[str, str]
) -> Awaitable[httpx.Response]:
    """POST ``data`` as a browser submits a form: urlencoded, with the content type even when
    there are no fields (httpx leaves it out for an empty ``data``)."""
    return client.post(
        path,
        content=urlencode(data),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


class Browser:
    """One browser: its own cookie jar, talking to the app in-process."""

    def __init__(self, client: httpx.AsyncClient, site: Site) -> None:
        self.client = client
        self.site = site

    @property
    def session_cookie_name(self) -> str:
        https = self.site.settings.public_url.startswith("https://")
        return "__Host-authdb_session" if https else "authdb_session"

    @property
    def session_cookie(self) -> str | None:
        return self.client.cookies.get(self.session_cookie_name)

    @property
    def csrf_cookie(self) -> str | None:
        return self.client.cookies.get("authdb_csrf")

    def set_csrf_cookie(self, value: str) -> None:
        """Overwrite the CSRF cookie, as a script on a sibling subdomain could try to."""
        host = httpx.URL(str(self.client.base_url)).host
        self.client.cookies.delete("authdb_csrf")
        self.client.cookies.set("authdb_csrf", value, domain=host, path="/")

    async def token_for(self, path: str) -> str:
        """GET a page and read its form's CSRF token."""
        response = await self.client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return csrf_field(response.text)

    async def submit(
        self, page: str, data: dict[str, str], *, action: str | None = None
    ) -> httpx.Response:
        """GET ``page``, then POST its form (to ``action``, default the page) with ``data``."""
        token = await self.token_for(page)
        target = action or page.split("?", 1)[0]
        return await self.client.post(target, data={"csrf_token": token, **data})

    async def sign_in(
        self, username: str = "alice", password: str = PASSWORD, next_: str = ""
    ) -> httpx.Response:
        return await self.submit(
            "/login", {"username": username, "password": password, "next": next_}
        )

    async def signed_in(self, username: str = "alice", password: str = PASSWORD) -> Browser:
        response = await self.sign_in(username, password)
        assert response.status_code == 303, response.text[:2000]
        assert self.session_cookie
        return self

    def api_headers(self) -> dict[str, str]:
        token = self.csrf_cookie
        assert token
        return {"X-CSRF-Token": token}

    async def sessions(self) -> list[dict[str, Any]]:
        response = await self.client.get("/users/me/sessions")
        assert response.status_code == 200, response.text
        return list(response.json())

    async def session_id(self) -> int:
        """The id of this browser's cookie session (listed as current)."""
        (current,) = [s["id"] for s in await self.sessions() if s["current"]]
        return int(current)

    async def assert_signed_out(self) -> None:
        account = await self.client.get("/account")
        assert account.status_code == 303
        assert account.headers["location"] == "/login?next=/account"
        me = await self.client.get("/users/me")
        assert me.status_code == 401, me.text


@dataclass
class Site:
    """A started authdb service and the browsers and API clients talking to it."""

    auth: Auth
    app: FastAPI
    stack: AsyncExitStack
    mailbox: Mailbox

    @property
    def settings(self) -> Settings:
        return self.auth.settings

    async def browser(self, base_url: str | None = None, **headers: str) -> Browser:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=base_url or self.settings.public_url,
            headers=headers,
        )
        await self.stack.enter_async_context(client)
        return Browser(client, self)

    async def api(self) -> httpx.AsyncClient:
        """A client without cookies of its own (an API caller)."""
        return (await self.browser()).client

    async def create_user(
        self, username: str = "alice", password: str = PASSWORD, **fields: Any
    ) -> Any:
        fields.setdefault("email", f"{username}@example.com")
        fields.setdefault("is_verified", True)
        return await provisioning.create_user(
            self.auth.core, username=username, password=password, client=CLI_CLIENT, **fields
        )

    async def tokens(self, username: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
        api = await self.api()
        response = await api.post("/token", data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def bearer(self, username: str = "alice", password: str = PASSWORD) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {(await self.tokens(username, password))['access_token']}"
        }

    async def events(self) -> list[tuple[str, int | None]]:
        return [(e.event, e.user_id) for e in await list_events(self.auth.core)]


MakeSite = Callable[..., Awaitable[Site]]


@pytest.fixture
async def make_site(
    make_settings: Callable[..., Settings], smtp_server: tuple[int, Mailbox]
) -> AsyncIterator[MakeSite]:
    """``await make_site(**settings_overrides)``: the service app, started by its lifespan."""
    async with AsyncExitStack() as stack:

        async def _make(**overrides: Any) -> Site:
            auth = Auth(make_settings(**overrides))
            app = create_app(auth=auth)
            await migrate.upgrade(auth.core.engine)  # as `authdb migrate` would
            await stack.enter_async_context(app.router.lifespan_context(app))
            return Site(auth, app, stack, smtp_server[1])

        yield _make


@pytest.fixture
async def site(make_site: MakeSite) -> Site:
    return await make_site()


def assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    # Scripts only from this origin (the passkey script), and no inline script at all.
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


def assert_only_passkey_script(html: str, *, expected: bool) -> None:
    """No inline script anywhere; the passkey script (from this origin) where ``expected``."""
    tags = re.findall(r"<script\b([^>]*)>(.*?)</script\s*>", html, re.S | re.I)
    assert html.lower().count("<script") == len(tags)
    assert all(body.strip() == "" for _attributes, body in tags)
    sources = [re.search(r'src="([^"]*)"', attributes) for attributes, _body in tags]
    assert [match.group(1) if match else None for match in sources] == (
        ["/assets/authdb-passkeys.js"] if expected else []
    )


def assert_csrf_refused_page(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text[:1000])
    assert_page_headers(response)
    assert CSRF_REFUSED in response.text


# -- pages, headers, settings -------------------------------------------------------------


async def test_every_page_renders_html_with_safe_headers_and_the_site_name(
    make_site: MakeSite,
) -> None:
    site = await make_site(site_name="Example & Co")
    await site.create_user()
    anonymous = await site.browser()
    pages = ["/login", "/register", "/forgot-password", "/reset-password?token=abc"]
    pages += ["/verify?token=abc", "/login?notice=registered"]
    stylesheets = set()
    for path in pages:
        response = await anonymous.client.get(path)
        assert response.status_code == 200, path
        assert_page_headers(response)
        title = re.search(r"<title>(.*?)</title>", response.text, re.S)
        assert title and "Example &amp; Co" in title.group(1), path
        assert_only_passkey_script(response.text, expected=path.startswith("/login"))
        assert ' style="' not in response.text
        stylesheets.update(re.findall(r'<link rel="stylesheet" href="([^"]+)"', response.text))
    browser = await (await site.browser()).signed_in()
    account = await browser.client.get("/account")
    assert account.status_code == 200
    assert_page_headers(account)
    assert "Example &amp; Co" in account.text and "alice@example.com" in account.text
    assert_only_passkey_script(account.text, expected=True)
    # The stylesheet every page links is served, from this origin.
    assert stylesheets == {"/assets/authdb.css"}
    css = await anonymous.client.get("/assets/authdb.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert len(css.content) > 100
    # Outcome and error pages carry the same headers.
    sent = await anonymous.submit("/forgot-password", {"email": "alice@example.com"})
    assert sent.status_code == 200
    assert_page_headers(sent)
    refused = await anonymous.client.post("/login", data={"username": "a", "password": "b"})
    assert_csrf_refused_page(refused)


async def test_pages_disabled_404_while_the_api_works(make_site: MakeSite) -> None:
    site = await make_site(pages_enabled=False)
    await site.create_user()
    api = await site.api()
    for path in ("/login", "/account", "/forgot-password", "/assets/authdb.css"):
        assert (await api.get(path)).status_code == 404, path
    for path in ("/register", "/verify?token=x"):  # only the API's POST is left
        assert (await api.get(path)).status_code == 405, path
    assert (await api.post("/login", data={"username": "alice"})).status_code == 404
    assert (await site.tokens())["access_token"]
    created = await api.post(
        "/register",
        json={"username": "bob", "email": "bob@example.com", "password": PASSWORD},
    )
    assert created.status_code == 201, created.text
    me = await api.get("/users/me", headers=await site.bearer("bob"))
    assert me.status_code == 200 and me.json()["username"] == "bob"


async def test_a_template_override_replaces_just_that_page(
    make_site: MakeSite, tmp_path: Path
) -> None:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "login.html").write_text(
        "<!doctype html><title>Custom · {{ site_name }}</title>"
        '<form method="post" action="{{ paths.login }}">'
        '<input type="hidden" name="csrf_token" value="{{ csrf_token }}">'
        '<input type="hidden" name="next" value="{{ next }}">'
        '<input name="username"><input name="password" type="password"></form>'
        "<p>OVERRIDDEN LOGIN PAGE</p>"
    )
    site = await make_site(templates_dir=str(tmp_path), site_name="Acme")
    await site.create_user()
    browser = await site.browser()
    login = await browser.client.get("/login")
    assert login.status_code == 200
    assert "OVERRIDDEN LOGIN PAGE" in login.text
    assert "<title>Custom · Acme</title>" in login.text
    assert_page_headers(login)
    register = await browser.client.get("/register")
    assert "OVERRIDDEN" not in register.text
    assert 'action="/register"' in register.text and "Create account" in register.text
    # The overridden form still signs in.
    await browser.signed_in()
    assert (await browser.client.get("/account")).status_code == 200


# -- the session cookie -------------------------------------------------------------------


async def test_sign_in_sets_an_httponly_lax_cookie_and_a_new_csrf_token(site: Site) -> None:
    await site.create_user()
    browser = await site.browser()
    before = await browser.token_for("/login")
    assert browser.csrf_cookie == before
    response = await browser.client.post(
        "/login", data={"csrf_token": before, "username": "alice", "password": PASSWORD}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    cookies = set_cookies(response)
    session = cookies["authdb_session"]
    assert len(session.value) >= 43
    assert "httponly" in session.attributes
    assert session.attributes["samesite"].lower() == "lax"
    assert session.attributes["path"] == "/"
    assert "secure" not in session.attributes
    assert "domain" not in session.attributes
    assert int(session.attributes["max-age"]) == 14 * 24 * 3600
    assert "__Host-authdb_session" not in cookies
    csrf = cookies["authdb_csrf"]
    assert csrf.value and csrf.value != before
    assert "httponly" not in csrf.attributes  # same-origin JavaScript reads it
    assert csrf.attributes["samesite"].lower() == "lax"
    assert csrf.attributes["path"] == "/"
    account = await browser.client.get("/account")
    assert account.status_code == 200 and "alice" in account.text
    # The page's forms now carry the new token.
    assert csrf_field(account.text) == csrf.value
    me = await browser.client.get("/users/me")
    assert me.status_code == 200 and me.json()["username"] == "alice"


async def test_on_https_the_cookie_is_host_prefixed_and_secure(make_site: MakeSite) -> None:
    public = "https://auth.example.test"
    site = await make_site(public_url=public)
    await site.create_user()
    browser = await site.browser(public)
    response = await browser.sign_in()
    assert response.status_code == 303
    cookies = set_cookies(response)
    assert "authdb_session" not in cookies
    session = cookies["__Host-authdb_session"]
    assert {"secure", "httponly"} <= set(session.attributes)
    assert session.attributes["path"] == "/"
    assert "domain" not in session.attributes  # __Host-: host-only
    assert session.attributes["samesite"].lower() == "lax"
    assert "secure" in cookies["authdb_csrf"].attributes
    assert (await browser.client.get("/account")).status_code == 200
    assert (await browser.client.get("/users/me")).json()["username"] == "alice"
    # The unprefixed name means nothing on https (a sibling subdomain could have set it).
    other = await site.browser(public)
    other.client.cookies.set("authdb_session", session.value, domain="auth.example.test")
    assert (await other.client.get("/users/me")).status_code == 401
    assert (await other.client.get("/account")).status_code == 303


async def test_the_cookie_session_is_a_session_row_listed_and_revoked_but_never_refreshed(
    site: Site,
) -> None:
    await site.create_user()
    browser = await (await site.browser(**{"User-Agent": "PageTest/1.0"})).signed_in()
    api = await site.api()
    bearer = await site.bearer()
    listed = await browser.sessions()
    assert len(listed) == 2
    (mine,) = [s for s in listed if s["current"]]
    cookie_id = mine["id"]
    assert mine["user_agent"] == "PageTest/1.0"
    seen_by_api = (await api.get("/users/me/sessions", headers=bearer)).json()
    assert {s["id"]: s["current"] for s in seen_by_api}[cookie_id] is False
    # It is a row of auth_sessions, carried by the cookie's hash, with no refresh token.
    async with site.auth.core.sessionmaker() as db:
        row = await db.get(AuthSession, cookie_id)
        assert row is not None and row.cookie_hash is not None
        assert browser.session_cookie not in (row.cookie_hash,)  # stored hashed
        refresh_rows = await db.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.session_id == cookie_id)
        )
        assert refresh_rows == 0
    # The account page lists it as this device, the API session with a sign-out form.
    account = await browser.client.get("/account")
    assert "This device" in account.text
    other = next(s["id"] for s in listed if not s["current"])
    assert f'action="/account/sessions/{other}/revoke"' in account.text
    chrome = await (await site.browser(**{"User-Agent": CHROME_ON_LINUX})).signed_in()
    account = await browser.client.get("/account")
    chrome_id = await chrome.session_id()
    form = account.text.split(f'action="/account/sessions/{chrome_id}/revoke"', 1)[1]
    button = form.split("</button>", 1)[0]
    assert "Sign out" in button and "Chrome on Linux" in button  # its accessible name
    # The cookie is no refresh token, nor an access token.
    cookie = browser.session_cookie
    assert cookie
    for presented in (cookie, "A" * len(cookie)):
        refresh = await api.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": presented}
        )
        # Exactly the answer for a token that never existed.
        assert refresh.status_code == 401
        assert refresh.json()["error"] == "invalid_grant"
    assert (
        await api.get("/users/me", headers={"Authorization": f"Bearer {cookie}"})
    ).status_code == 401
    assert (await browser.client.get("/users/me")).status_code == 200
    # Revoked from the other (bearer) session: the cookie stops working at once.
    deleted = await api.delete(f"/users/me/sessions/{cookie_id}", headers=bearer)
    assert deleted.status_code == 204
    await browser.assert_signed_out()
    assert (await api.get("/users/me", headers=bearer)).status_code == 200


async def test_signing_in_again_in_the_same_browser_ends_the_replaced_session(
    site: Site,
) -> None:
    await site.create_user("alice")
    await site.create_user("bob")
    browser = await (await site.browser()).signed_in("alice")
    first = await browser.session_id()
    first_cookie = browser.session_cookie
    again = await browser.sign_in("bob")
    assert again.status_code == 303
    assert browser.session_cookie != first_cookie
    assert (await browser.client.get("/users/me")).json()["username"] == "bob"
    async with site.auth.core.sessionmaker() as db:
        row = await db.get(AuthSession, first)
        assert row is not None and row.revoked_at is not None
    # The old cookie, replayed, is dead.
    replay = await site.browser()
    replay.client.cookies.set("authdb_session", first_cookie or "", domain="auth.example.test")
    await replay.assert_signed_out()
    # A failed attempt replaces nothing.
    assert (await browser.sign_in("alice", WRONG)).status_code == 401
    assert (await browser.client.get("/users/me")).json()["username"] == "bob"


async def test_every_event_that_ends_sessions_ends_the_cookie_session(site: Site) -> None:
    api = await site.api()
    await site.create_user("root", is_superuser=True)
    for name in ("reset", "change", "disable", "delete"):
        await site.create_user(name)
    browsers = {n: await (await site.browser()).signed_in(n) for n in ("reset", "change")}
    browsers |= {n: await (await site.browser()).signed_in(n) for n in ("disable", "delete")}
    # Password reset through the emailed link.
    forgot = await api.post("/password/forgot", json={"email": "reset@example.com"})
    assert forgot.status_code == 202
    (message,) = [m for m in await _mail_to(site, "reset@example.com")]
    reset = await api.post(
        "/password/reset",
        json={"token": link_token(message, "reset-password"), "password": NEW_PASSWORD},
    )
    assert reset.status_code == 204, reset.text
    await browsers["reset"].assert_signed_out()
    # Password change from another (bearer) session.
    changed = await api.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=await site.bearer("change"),
    )
    assert changed.status_code == 204, changed.text
    await browsers["change"].assert_signed_out()
    # An administrator disables the account.
    disabled = await api.patch(
        f"/users/{await _user_id(site, 'disable')}",
        json={"disabled": True},
        headers=await site.bearer("root"),
    )
    assert disabled.status_code == 200, disabled.text
    await browsers["disable"].assert_signed_out()
    # The account is deleted (from another session).
    gone = await api.request(
        "DELETE", "/users/me", json={"password": PASSWORD}, headers=await site.bearer("delete")
    )
    assert gone.status_code == 204, gone.text
    await browsers["delete"].assert_signed_out()
    # Every one of those cookie sessions is over in the table too.
    async with site.auth.core.sessionmaker() as db:
        live = await db.scalars(
            select(AuthSession).where(
                AuthSession.cookie_hash.is_not(None), AuthSession.live_at(site.auth.core.clock())
            )
        )
        assert list(live) == []


async def test_page_sign_in_and_out_are_audited_and_end_the_session(site: Site) -> None:
    user = await site.create_user()
    browser = await site.browser()
    assert (await browser.sign_in("alice", WRONG)).status_code == 401
    assert (await browser.sign_in("alice", PASSWORD)).status_code == 303
    session_id = await browser.session_id()
    out = await browser.submit("/account", {}, action="/logout")
    assert out.status_code == 303
    assert out.headers["location"] == "/login?notice=signed_out"
    cleared = set_cookies(out)["authdb_session"]
    assert cleared.value in ("", '""') and int(cleared.attributes["max-age"]) <= 0
    async with site.auth.core.sessionmaker() as db:
        row = await db.get(AuthSession, session_id)
        assert row is not None and row.revoked_at is not None
    await browser.assert_signed_out()
    events = await site.events()
    assert events[-3:] == [("login_failed", user.id), ("login_ok", user.id), ("logout", user.id)]
    ok = [e for e in await list_events(site.auth.core) if e.event == "login_ok"][-1]
    assert ok.detail is not None and ok.detail.get("session_id") == session_id
    assert ok.ip_address == "127.0.0.1"


# -- lockout, rate limits, audit ----------------------------------------------------------


async def test_page_sign_in_shares_the_lockout_with_token(make_site: MakeSite) -> None:
    site = await make_site(login_max_failures=3, login_lockout_minutes=15)
    await site.create_user("alice")
    await site.create_user("bob")
    api = await site.api()
    # alice: every wrong password through the page.
    browser = await site.browser()
    for _ in range(3):
        wrong = await browser.sign_in("alice", WRONG)
        assert wrong.status_code == 401
        assert_page_headers(wrong)
        assert "Incorrect username or password" in wrong.text
        assert "authdb_session" not in set_cookies(wrong)
    locked = await browser.sign_in("alice", PASSWORD)
    assert locked.status_code == 429
    assert_page_headers(locked)
    assert "Too many attempts" in locked.text
    assert int(locked.headers["retry-after"]) > 0
    assert "authdb_session" not in set_cookies(locked)
    token = await api.post("/token", data={"username": "alice", "password": PASSWORD})
    assert token.status_code == 429
    # bob: page and /token failures add up to one lockout.
    assert (await browser.sign_in("bob", WRONG)).status_code == 401
    assert (
        await api.post("/token", data={"username": "bob", "password": WRONG})
    ).status_code == 401
    assert (await browser.sign_in("BOB@example.com", WRONG)).status_code == 401
    assert (
        await api.post("/token", data={"username": "bob", "password": PASSWORD})
    ).status_code == 429
    assert (await browser.sign_in("bob", PASSWORD)).status_code == 429
    assert browser.session_cookie is None


async def test_page_sign_in_counts_against_the_address_budget(make_site: MakeSite) -> None:
    site = await make_site(rate_limit_login_failures="3/minute", login_max_failures=100)
    await site.create_user()
    api = await site.api()
    browser = await site.browser()
    assert (await browser.sign_in("nobody1", WRONG)).status_code == 401
    assert (
        await api.post("/token", data={"username": "nobody2", "password": WRONG})
    ).status_code == 401
    assert (await browser.sign_in("nobody3", WRONG)).status_code == 401
    over = await browser.sign_in("alice", PASSWORD)
    assert over.status_code == 429
    assert "Retry-After" in over.headers
    assert (
        await api.post("/token", data={"username": "alice", "password": PASSWORD})
    ).status_code == 429


async def test_sign_in_errors_show_on_the_page(make_site: MakeSite) -> None:
    site = await make_site(require_verified_email=True)
    await site.create_user("alice")
    await site.create_user("unverified", is_verified=False)
    await site.create_user("off", disabled=True)
    browser = await site.browser()
    missing = await browser.submit("/login", {"username": "alice", "password": ""})
    assert missing.status_code == 422
    assert 'id="password-error"' in missing.text and 'value="alice"' in missing.text
    unverified = await browser.sign_in("unverified")
    assert unverified.status_code == 400 and "Verify your email address" in unverified.text
    disabled = await browser.sign_in("off")
    assert disabled.status_code == 400 and "disabled" in disabled.text
    assert browser.session_cookie is None
    wrong = await browser.sign_in("alice", WRONG)
    assert PASSWORD not in wrong.text and WRONG not in wrong.text  # passwords never refilled


# -- registration and emailed links -------------------------------------------------------


async def _mail_to(site: Site, address: str, count: int = 1) -> list[EmailMessage]:
    """The messages delivered to ``address``, once ``count`` have arrived."""
    for _ in range(500):
        found = site.mailbox.to(address)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} message(s) to {address}")


async def _user(site: Site, login: str) -> User | None:
    async with site.auth.core.sessionmaker() as db:
        return await find_by_login(db, login)


async def _user_id(site: Site, login: str) -> int:
    user = await _user(site, login)
    assert user is not None
    return int(user.id)


async def test_registration_page_errors_success_and_verification(site: Site) -> None:
    await site.create_user("taken")
    browser = await site.browser()
    form = {"username": "newbie", "email": "newbie@example.com", "full_name": "New Bie"}
    weak = await browser.submit("/register", {**form, "password": "short"})
    assert weak.status_code == 422
    assert_page_headers(weak)
    assert 'id="password-error"' in weak.text
    assert 'aria-describedby="password-error"' in weak.text
    assert 'value="newbie@example.com"' in weak.text and 'value="New Bie"' in weak.text
    assert "short" not in re.findall(r'value="([^"]*)"', weak.text)  # no password refilled
    taken = await browser.submit("/register", {**form, "username": "TAKEN", "password": PASSWORD})
    assert taken.status_code == 409
    assert 'id="username-error"' in taken.text
    assert "already" in taken.text
    bad_email = await browser.submit("/register", {**form, "email": "nope", "password": PASSWORD})
    assert bad_email.status_code == 422 and 'id="email-error"' in bad_email.text
    created = await browser.submit("/register", {**form, "password": PASSWORD})
    assert created.status_code == 303
    assert created.headers["location"] == "/login?notice=registered"
    landing = await browser.client.get(created.headers["location"])
    assert "Your account is ready" in landing.text
    (message,) = await _mail_to(site, "newbie@example.com")
    token = link_token(message, "verify")
    # Following the link (twice: a mail scanner, then the person) spends nothing.
    reader = await site.browser()
    for _ in range(2):
        page = await reader.client.get(f"/verify?token={token}")
        assert page.status_code == 200
        assert f'name="token" value="{token}"' in page.text
        assert "Verify my email address" in page.text
    user = await _user(site, "newbie")
    assert user is not None and not user.is_verified
    verified = await reader.submit(f"/verify?token={token}", {"token": token})
    assert verified.status_code == 200, verified.text
    assert "Your email address is verified." in verified.text
    user = await _user(site, "newbie")
    assert user is not None and user.is_verified
    again = await reader.submit(f"/verify?token={token}", {"token": token})
    assert again.status_code == 400
    assert_page_headers(again)
    assert "invalid" in again.text
    # The new account signs in through the page.
    await (await site.browser()).signed_in("newbie")


async def test_reset_password_page_spends_the_token_only_on_post(site: Site) -> None:
    await site.create_user()
    signed_in = await (await site.browser()).signed_in()
    api = await site.api()
    bearer = await site.bearer()
    phone = await site.browser()
    asked = await phone.submit("/forgot-password", {"email": "alice@example.com"})
    assert asked.status_code == 200 and "Check your email" in asked.text
    (message,) = await _mail_to(site, "alice@example.com")
    token = link_token(message, "reset-password")
    page = f"/reset-password?token={token}"
    for _ in range(2):
        shown = await phone.client.get(page)
        assert shown.status_code == 200 and f'name="token" value="{token}"' in shown.text
    mismatch = await phone.submit(
        page, {"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD + "x"}
    )
    assert mismatch.status_code == 422
    assert 'id="password_confirm-error"' in mismatch.text
    assert NEW_PASSWORD not in mismatch.text
    assert (await api.get("/users/me", headers=bearer)).status_code == 200  # nothing changed yet
    done = await phone.submit(
        page, {"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/login?notice=password_reset"
    # Every session ended, the cookie one included.
    await signed_in.assert_signed_out()
    assert (await api.get("/users/me", headers=bearer)).status_code == 401
    assert (await phone.sign_in("alice", PASSWORD)).status_code == 401
    await phone.signed_in("alice", NEW_PASSWORD)
    again = await (await site.browser()).submit(
        page, {"token": token, "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert again.status_code == 400 and "invalid" in again.text


# -- the API twins of page paths ----------------------------------------------------------


async def test_json_and_bearer_calls_to_shared_paths_reach_the_api(site: Site) -> None:
    api = await site.api()
    created = await api.post(
        "/register", json={"username": "bob", "email": "bob@example.com", "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    assert created.headers["content-type"] == "application/json"
    (message,) = await _mail_to(site, "bob@example.com")
    verified = await api.post("/verify", json={"token": link_token(message, "verify")})
    assert verified.status_code == 200 and verified.json()["is_verified"] is True
    bearer = await site.bearer("bob")
    assert (await api.post("/logout", headers=bearer)).status_code == 204
    assert (await api.get("/users/me", headers=bearer)).status_code == 401
    # A form post to those paths is a page's.
    for path, data in (
        ("/register", {"username": "x", "email": "x@example.com", "password": PASSWORD}),
        ("/verify", {"token": "abc"}),
        ("/logout", {"csrf_token": ""}),
    ):
        response = await api.post(path, data=data)
        assert_csrf_refused_page(response)
    assert await _user(site, "x") is None
    multipart = await api.post("/register", files={"username": (None, "y")})
    assert_csrf_refused_page(multipart)


async def test_a_bearer_logout_with_a_form_content_type_is_the_apis(site: Site) -> None:
    # As before pages existed (and as with AUTHDB_PAGES_ENABLED=false): a bearer request to
    # /logout is the API's, whatever content type its (empty) body claims.
    await site.create_user()
    api = await site.api()
    bearer = await site.bearer()
    form_logout = await api.post(
        "/logout", headers={**bearer, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form_logout.status_code == 204, form_logout.text[:300]
    assert (await api.get("/users/me", headers=bearer)).status_code == 401


# -- /account -----------------------------------------------------------------------------


async def test_account_sections_save_refuse_and_sign_out(site: Site) -> None:
    await site.create_user("alice")
    await site.create_user("bob")
    browser = await (await site.browser()).signed_in("alice")
    other = await (await site.browser(**{"User-Agent": "OtherDevice/2"})).signed_in("alice")
    api = await site.api()
    # Profile: a taken name is refused next to the field, a new full name is saved.
    taken = await browser.submit("/account", {"username": "BOB"}, action="/account/profile")
    assert taken.status_code == 409
    assert_page_headers(taken)
    assert 'id="profile-username-error"' in taken.text
    saved = await browser.submit(
        "/account", {"username": "alice", "full_name": "Alice A."}, action="/account/profile"
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == "/account?notice=profile_saved"
    assert (
        "Your profile has been saved." in (await browser.client.get(saved.headers["location"])).text
    )
    assert (await browser.client.get("/users/me")).json()["full_name"] == "Alice A."
    # Email: the current password is checked; the new address waits for its link.
    wrong = await browser.submit(
        "/account",
        {"email": "new@example.com", "current_password": WRONG},
        action="/account/email",
    )
    assert wrong.status_code == 400
    assert 'id="email-current_password-error"' in wrong.text
    assert 'value="new@example.com"' in wrong.text
    pending = await browser.submit(
        "/account",
        {"email": "new@example.com", "current_password": PASSWORD},
        action="/account/email",
    )
    assert pending.status_code == 303
    assert (await browser.client.get("/users/me")).json()["pending_email"] == "new@example.com"
    await _mail_to(site, "new@example.com")
    # Password: the confirmation must match; a change ends the other sessions, not this one.
    mismatch = await browser.submit(
        "/account",
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": "something else entirely",
        },
        action="/account/password",
    )
    assert mismatch.status_code == 422
    assert 'id="password-new_password_confirm-error"' in mismatch.text
    changed = await browser.submit(
        "/account",
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        },
        action="/account/password",
    )
    assert changed.status_code == 303
    await other.assert_signed_out()
    assert (await browser.client.get("/users/me")).status_code == 200
    # Sessions: another one is signed out from the list.
    other = await (await site.browser(**{"User-Agent": "OtherDevice/3"})).signed_in(
        "alice", NEW_PASSWORD
    )
    other_id = await other.session_id()
    account = await browser.client.get("/account")
    assert "OtherDevice/3" in account.text
    revoked = await browser.submit("/account", {}, action=f"/account/sessions/{other_id}/revoke")
    assert revoked.status_code == 303
    assert revoked.headers["location"] == "/account?notice=session_revoked"
    await other.assert_signed_out()
    # Another user's session id changes nothing.
    bob = await (await site.browser()).signed_in("bob")
    bob_id = await bob.session_id()
    await browser.submit("/account", {}, action=f"/account/sessions/{bob_id}/revoke")
    assert (await bob.client.get("/users/me")).status_code == 200
    # Delete: the password confirms it; then the account and its sessions are gone.
    refused = await browser.submit("/account", {"password": WRONG}, action="/account/delete")
    assert refused.status_code == 400
    assert 'id="delete-password-error"' in refused.text
    deleted = await browser.submit("/account", {"password": NEW_PASSWORD}, action="/account/delete")
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/login?notice=account_deleted"
    assert int(set_cookies(deleted)["authdb_session"].attributes["max-age"]) <= 0
    assert browser.session_cookie is None
    await browser.assert_signed_out()
    gone = await api.post("/token", data={"username": "alice", "password": NEW_PASSWORD})
    assert gone.status_code == 401


async def test_odd_session_ids_and_oversized_fields_get_pages_not_500s(site: Site) -> None:
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    token = await alice.token_for("/account")
    # Digits that str.isdigit() accepts but int() does not, and non-ASCII digits.
    for raw in ("%C2%B2", "%E2%91%A0", "%D9%A1", "%EF%BC%91", "0", "01", "9" * 30):
        response = await alice.client.post(
            f"/account/sessions/{raw}/revoke", data={"csrf_token": token}
        )
        assert response.status_code == 303, (raw, response.status_code)
    assert await alice.session_id()  # still signed in: no odd id named her session
    # Sign-in fields over /token's caps: 422 next to the field, the value not echoed back.
    browser = await site.browser()
    huge = "u" * 5000
    response = await browser.submit("/login", {"username": huge, "password": "x" * 5000})
    assert response.status_code == 422
    assert huge not in response.text
    assert "This is too long." in response.text
    # A form that cannot be read (too many fields) is an HTML page, not JSON.
    many = {f"f{i}": "x" for i in range(40)}
    response = await browser.submit("/login", many)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")


async def test_page_sign_out_ends_a_disabled_accounts_session(site: Site) -> None:
    user = await site.create_user()
    alice = await (await site.browser()).signed_in()
    session_id = await alice.session_id()
    token = await alice.token_for("/account")
    async with site.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == user.id).values(disabled=True))
    response = await alice.client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303
    async with site.auth.core.sessionmaker() as db:
        row = await db.get(AuthSession, session_id)
    assert row is not None and row.revoked_at is not None


async def test_a_lost_verification_link_can_be_replaced_from_the_pages(
    make_site: MakeSite,
) -> None:
    site = await make_site(require_verified_email=True)
    await site.create_user("newbie", is_verified=False)
    browser = await site.browser()
    # Sign-in refused for the unverified address: the page offers a new link.
    refused = await browser.sign_in("newbie")
    assert refused.status_code == 400
    assert "Verify your email address first" in refused.text
    assert 'href="/verify"' in refused.text
    # /verify without a token asks for the address; a bad link points there too.
    form = await browser.client.get("/verify")
    assert form.status_code == 200 and 'name="email"' in form.text
    bad = await browser.submit("/verify?token=nope", {"token": "nope"})
    assert bad.status_code == 400 and 'href="/verify"' in bad.text
    # The same answer for an unknown address and a real one; only the real one gets mail.
    for address in ("nobody@example.com", "newbie@example.com"):
        sent = await browser.submit("/verify", {"email": address})
        assert sent.status_code == 200
        assert "If this address belongs to an unverified account" in sent.text
    invalid = await browser.submit("/verify", {"email": "not an address"})
    assert invalid.status_code == 422 and 'id="email-error"' in invalid.text
    (message,) = await _mail_to(site, "newbie@example.com")
    token = link_token(message, "verify")
    assert (await browser.submit(f"/verify?token={token}", {"token": token})).status_code == 200
    await (await site.browser()).signed_in("newbie")
    assert site.mailbox.to("nobody@example.com") == []


async def test_the_account_page_offers_a_new_link_while_unverified(site: Site) -> None:
    await site.create_user(is_verified=False)
    alice = await (await site.browser()).signed_in()
    account = await alice.client.get("/account")
    assert "Send a new verification link" in account.text
    sent = await alice.submit("/account", {"email": "alice@example.com"}, action="/verify")
    assert sent.status_code == 200
    (message,) = await _mail_to(site, "alice@example.com")
    token = link_token(message, "verify")
    assert (await alice.submit(f"/verify?token={token}", {"token": token})).status_code == 200
    assert "Send a new verification link" not in (await alice.client.get("/account")).text


async def test_without_a_mail_server_the_pages_say_where_the_mail_went(
    make_site: MakeSite,
) -> None:
    site = await make_site(smtp_host=None)
    browser = await site.browser()
    form = {"username": "newbie", "email": "newbie@example.com", "password": PASSWORD}
    created = await browser.submit("/register", form)
    landing = await browser.client.get(created.headers["location"])
    assert "the email was written to the server" in landing.text
    sent = await browser.submit("/forgot-password", {"email": "newbie@example.com"})
    assert "the email was written to the server" in sent.text


async def test_the_service_root_leads_a_person_to_their_account(site: Site) -> None:
    browser = await site.browser()
    root = await browser.client.get("/")
    assert root.status_code == 303 and root.headers["location"] == "/account"
    account = await browser.client.get("/account")
    assert account.headers["location"] == "/login?next=/account"


async def test_a_locked_account_form_says_when_to_retry(make_site: MakeSite) -> None:
    """Wrong current passwords on /account lock the account like wrong sign-ins; the 429 page
    carries Retry-After like every other 429."""
    site = await make_site(login_max_failures=2)
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    wrong = {
        "current_password": "not it",
        "new_password": "x" * 20,
        "new_password_confirm": "x" * 20,
    }
    statuses = []
    for _ in range(3):
        response = await alice.submit("/account", wrong, action="/account/password")
        statuses.append(response.status_code)
    assert statuses == [400, 400, 429]  # max failures answered as such, then the lock
    assert int(response.headers["retry-after"]) > 0
    assert "Too many attempts" in response.text
