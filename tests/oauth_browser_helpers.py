"""Helpers for tests/test_oauth_browser.py: a real `authdb serve` with sign-in providers, and the
steps a person takes in Chromium at the site and at the providers.

The server knows three providers, all on 127.0.0.1 (other ports):

- ``corp``: the shared OpenID Connect provider (``oidc_provider``, panva's oidc-provider);
- ``github``: the shared GitHub stand-in (``github_standin``);
- ``spare``: an OpenID Connect provider of the module's own, which a test stops and starts
  ("provider down"). Only that test uses it, so the server has never fetched its discovery
  document before the test starts.

Their clients are registered with the server's redirect URIs before the server starts (the
port is picked first).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx
from playwright.sync_api import APIResponse, BrowserContext, Page, Route, expect

from tests.browser import SITE_NAME, Inbox, Site, fresh_database, start_serve
from tests.conftest import PASSWORD, free_port
from tests.github_standin import GitHubStandin
from tests.oauth_servers import OIDCProvider

SESSION_COOKIE = "authdb_session"
FLOW_COOKIE = "authdb_oauth"
# The words of the error pages (src/authdb/http/pages/oauth.py).
STALE = "could not be completed"
UNREACHABLE = "could not be reached"
EXISTS = "already exists"
LINK_PASSWORD_MISSING = "Enter your password to link it."
WRONG_PASSWORD = "Incorrect password"
LABELS = {"corp": "Corp", "github": "GitHub", "spare": "Spare"}

# What the browser shows for a callback the test holds back (never sent to the server).
_HELD_PAGE = (
    '<!doctype html><html><head><link rel="icon" href="data:,"><title>held</title></head>'
    '<body><p id="held">held back by the test</p></body></html>'
)


def fresh_login(stem: str) -> str:
    """A login unique per test (the module's tests share the servers and providers)."""
    return f"{stem}{secrets.token_hex(4)}"


@dataclass
class OAuthSite(Site):
    """``Site`` with the providers it was started with."""

    corp: OIDCProvider
    github: GitHubStandin
    spare: OIDCProvider

    @property
    def origins(self) -> set[str]:
        """The origins a browser may talk to: the site and its providers."""
        return {
            _origin(url)
            for url in (self.base, self.corp.issuer, self.github.base_url, self.spare.issuer)
        }

    def callback_prefix(self, provider: str) -> str:
        return self.url(f"/oauth/{provider}/callback?")

    # --- accounts at the providers ---

    def corp_account(self, stem: str = "ada", email: str | None = None) -> tuple[str, str]:
        """A new account at the OIDC provider (email verified): ``(login, email)``."""
        login = fresh_login(stem)
        address = email or f"{login}@corp.example"
        self.corp.add_account(login, address, preferred_username=login, name=f"{stem} Corp")
        return login, address

    def github_user(self, stem: str = "octo", *, verified: bool = True) -> tuple[str, str]:
        """A new GitHub user whose one (primary) address is verified or not: ``(login, email)``."""
        login = fresh_login(stem)
        address = f"{login}@gh.example"
        self.github.add_user(
            secrets.randbelow(10**9) + 1,
            login,
            name=f"{stem} Cat",
            public_email=None,
            emails=[{"email": address, "primary": True, "verified": verified}],
        )
        return login, address

    # --- the API, with the browser's cookies (GET: no CSRF header needed) ---

    def me(self, context: BrowserContext) -> APIResponse:
        return context.request.get(self.url("/users/me"))

    def me_json(self, context: BrowserContext) -> dict[str, Any]:
        response = self.me(context)
        assert response.status == 200, response.text()
        return dict(response.json())

    def assert_signed_out(self, context: BrowserContext) -> None:
        assert SESSION_COOKIE not in cookies(context), cookies(context)
        assert self.me(context).status == 401

    # --- the pages ---

    def continue_with(self, page: Page, provider: str, start: str = "/login") -> None:
        """Click "Continue with <provider>" on the sign-in (or register) page."""
        page.goto(start)
        page.locator(f"a.provider-button[data-provider={provider}]").click()

    def at_provider(self, page: Page, provider: str, login: str, *, deny: bool = False) -> None:
        """On the provider's page: type the login, then allow (or deny / cancel)."""
        if provider == "github":
            origin, buttons = self.github.base_url, ("button#authorize", "button#cancel")
        else:
            origin = (self.spare if provider == "spare" else self.corp).issuer
            buttons = ("button#signin", "button#deny")
        expect(page).to_have_url(re.compile("^" + re.escape(origin) + "/"))
        page.locator("input[name=login]").fill(login)
        page.locator(buttons[1] if deny else buttons[0]).click()

    def sign_out(self, page: Page) -> None:
        sign_out = page.locator("form[action$='/logout']")
        sign_out.get_by_role("button", name="Sign out").click()
        expect(sign_out).to_have_count(0)

    def expect_account(self, page: Page) -> None:
        expect(page).to_have_url(re.compile(re.escape(self.url("/account")) + r"(\?|$)"))
        expect(page.locator("#profile-username")).to_be_visible()

    def provider_row(self, page: Page, provider: str) -> Any:
        return page.locator(f"#provider-list li[data-provider={provider}]")

    def link_from_account(self, page: Page, provider: str, password: str | None = PASSWORD) -> None:
        """On /account: "Link <Label>", with the account's password typed first (None: an
        account without a password, whose form has no such field)."""
        row = self.provider_row(page, provider)
        field = row.locator(f"input#oauth-{provider}-password")
        if password is None:
            expect(field).to_have_count(0)
        else:
            field.fill(password)
        row.get_by_role("button", name=f"Link {LABELS[provider]}").click()

    def expect_notice(self, page: Page, words: str) -> None:
        """A success notice saying ``words`` (an account without a password shows another
        status notice at the top of /account too)."""
        expect(page.get_by_role("status").filter(has_text=words)).to_be_visible()

    def expect_error_page(self, page: Page, words: str, *, flow: str | None = "sign-in") -> None:
        """An error page saying ``words``; for a failed flow (``flow``: "sign-in" or "link"), the
        one its kind has: "Sign-in failed", back to sign in; or "Not linked", back to the account
        page."""
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text(words)
        assert SITE_NAME in page.title()
        if flow is None:
            return
        title, back, path = {
            "sign-in": ("Sign-in failed", "Back to sign in", "/login"),
            "link": ("Not linked", "Back to your account", "/account"),
        }[flow]
        expect(page).to_have_title(f"{title} · {SITE_NAME}")
        link = page.get_by_role("link", name=back, exact=True)
        expect(link).to_have_attribute("href", re.compile(re.escape(path) + "$"))

    def hold_callbacks(self, context: BrowserContext) -> CallbackHold:
        return CallbackHold(context, self)


class CallbackHold:
    """Keeps the provider's redirect to the site's callback from reaching the server: the URL is
    recorded and the browser shows a placeholder page instead. ``release()`` lets callbacks
    through again (the held URL can then be opened, changed, or opened elsewhere).

    Playwright does not reliably route the hops of a redirect chain, so while holding, the
    requests the browser sends to the providers are made by the context's own request client
    (same cookie jar), following the provider's own redirects by hand, and the first redirect
    that leaves for the site's callback is kept back.
    """

    def __init__(self, context: BrowserContext, site: OAuthSite) -> None:
        self.context = context
        self.callbacks = site.url("/oauth/")
        self.providers = {_origin(site.corp.issuer), _origin(site.spare.issuer)}
        self.providers.add(_origin(site.github.base_url))
        self.urls: list[str] = []
        context.route(self._matches, self._handle)

    def _matches(self, url: str) -> bool:
        return _origin(url) in self.providers

    def _handle(self, route: Route) -> None:
        response = route.fetch(max_redirects=0)
        for _ in range(10):
            location = response.headers.get("location")
            if response.status not in (301, 302, 303, 307, 308) or location is None:
                break
            target = urljoin(response.url, location)
            if target.startswith(self.callbacks) and "/callback?" in target:
                self.urls.append(target)
                route.fulfill(status=200, content_type="text/html", body=_HELD_PAGE)
                return
            if _origin(target) not in self.providers:
                break
            response = self.context.request.get(target, max_redirects=0)
        route.fulfill(response=response)

    def wait(self, page: Page) -> str:
        """The held callback URL, once the browser was sent there."""
        expect(page.locator("#held")).to_be_visible()
        assert len(self.urls) == 1, self.urls
        return self.urls[0]

    def release(self) -> None:
        self.context.unroute(self._matches, self._handle)


def with_query(url: str, **changes: str) -> str:
    """``url`` with query parameters replaced."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert set(changes) <= set(query), (changes, query)
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def cookies(context: BrowserContext) -> dict[str, Any]:
    return {cookie["name"]: cookie for cookie in context.cookies()}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# --- the server -------------------------------------------------------------------------------


@contextmanager
def serve(
    backend: str,
    workdir: Path,
    inbox: Inbox,
    corp: OIDCProvider,
    github: GitHubStandin,
    spare: OIDCProvider,
) -> Iterator[OAuthSite]:
    """`authdb serve` on a fresh database of ``backend`` with the three providers."""
    with ExitStack() as stack:
        database_url = fresh_database(stack, backend, workdir)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        corp_id, corp_secret = corp.register_client([f"{base}/oauth/corp/callback"])
        spare_id, spare_secret = spare.register_client([f"{base}/oauth/spare/callback"])
        gh_id, gh_secret = github.add_client([f"{base}/oauth/github/callback"])
        env = {
            "AUTHDB_DATABASE_URL": database_url,
            "AUTHDB_SECRET_KEY": "oauth-browser-test-secret-key-0123456789abcdef",
            "AUTHDB_SMTP_HOST": "127.0.0.1",
            "AUTHDB_SMTP_PORT": str(inbox.port),
            "AUTHDB_MAIL_FROM": "authdb <auth@example.com>",
            "AUTHDB_PUBLIC_URL": base,
            "AUTHDB_SITE_NAME": SITE_NAME,
            "AUTHDB_RATE_LIMIT_LOGIN_FAILURES": "1000/minute",
            "AUTHDB_RATE_LIMIT_REGISTER": "1000/minute",
            "AUTHDB_RATE_LIMIT_EMAIL_REQUESTS": "1000/minute",
            "AUTHDB_RATE_LIMIT_EMAIL_REQUESTS_PER_ADDRESS": "1000/minute",
            "AUTHDB_OAUTH_PROVIDERS": "corp,github,spare",
            "AUTHDB_OAUTH_CORP_CLIENT_ID": corp_id,
            "AUTHDB_OAUTH_CORP_CLIENT_SECRET": corp_secret,
            "AUTHDB_OAUTH_CORP_ISSUER": corp.issuer,
            "AUTHDB_OAUTH_GITHUB_CLIENT_ID": gh_id,
            "AUTHDB_OAUTH_GITHUB_CLIENT_SECRET": gh_secret,
            "AUTHDB_OAUTH_GITHUB_GITHUB_URL": github.base_url,
            "AUTHDB_OAUTH_GITHUB_API_URL": github.api_url,
            "AUTHDB_OAUTH_SPARE_CLIENT_ID": spare_id,
            "AUTHDB_OAUTH_SPARE_CLIENT_SECRET": spare_secret,
            "AUTHDB_OAUTH_SPARE_ISSUER": spare.issuer,
        }
        log_path = start_serve(stack, backend, workdir, env, base)
        yield OAuthSite(
            base=base,
            backend=backend,
            inbox=inbox,
            log=log_path,
            corp=corp,
            github=github,
            spare=spare,
        )


def password_user(site: OAuthSite, stem: str, email: str | None = None) -> tuple[str, str]:
    """An account with a password, registered through the API: ``(username, email)``."""
    username = fresh_login(stem)
    address = email or f"{username}@example.com"
    response = httpx.post(
        site.url("/register"),
        json={"username": username, "email": address, "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return username, address


NewContext = Callable[[], BrowserContext]
