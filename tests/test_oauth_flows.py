"""Sign-in with another provider over HTTP, the flow itself: every way a callback can fail
lands on a page (never a 500), ``next``, linking and unlinking from ``/account``, the audit
trail and the hooks. Both databases; a real OIDC provider and the GitHub stand-in
(tests/oauth_servers.py). Accounts and usernames are tests/test_oauth.py.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from authdb.db.models import OAuthIdentity
from authdb.http.pages.oauth import STALE
from authdb.http.pages.oauth_state import LIFETIME_SECONDS
from authdb.oauth.oidc import MAX_DOCUMENT_BYTES
from authdb.services import sessions
from authdb.services.core import ClientInfo
from authdb.services.hooks import UserSnapshot
from tests.conftest import PASSWORD, Harness, free_port
from tests.github_standin import GitHubStandin
from tests.mfa_helpers import freeze
from tests.oauth_servers import OIDCProvider, start_oidc_provider
from tests.test_oauth import (
    PUBLIC_URL,
    MakeSite,
    Site,
    build_site,
    corp_account,
    link_corp,
    new_login,
    post_account_form,
    sign_in_with_password,
    text_of,
)
from tests.test_pages import set_cookies

pytest_plugins = ["tests.oauth_servers"]

COOKIE = "authdb_oauth"
REFUSED = "Corp did not confirm it was you. Please start again."


@pytest.fixture
async def make_site(
    make_harness: Callable[..., Awaitable[Harness]],
    oidc_provider: OIDCProvider,
    github_standin: GitHubStandin,
) -> MakeSite:
    async def make(oidc: OIDCProvider | None = None, **overrides: Any) -> Site:
        return await build_site(make_harness, oidc or oidc_provider, github_standin, **overrides)

    return make


@pytest.fixture
async def site(make_site: MakeSite) -> Site:
    return await make_site()


@pytest.fixture
def own_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    """An OIDC provider of this test alone, to stop and start again."""
    provider = start_oidc_provider(state_dir=tmp_path_factory.mktemp("own-oidc"))
    try:
        yield provider
    finally:
        provider.stop()


def with_query(url: str, **changes: str | None) -> str:
    """``url`` (path and query) with parameters replaced (None: removed)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return f"{parts.path}?{urlencode(query)}"


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def reasons(site: Site) -> list[str]:
    """The ``reason`` of each ``oauth_failed`` event, oldest first."""
    events = sorted(await site.events("oauth_failed"), key=lambda e: e.id)
    for event in events:
        assert event.detail is not None and event.detail["provider"] in ("corp", "github")
    return [str((e.detail or {})["reason"]) for e in events]


def assert_failure_page(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert words in text_of(response), response.text[:3000]
    assert "Back to sign in" in response.text


def assert_linking_failure_page(response: httpx.Response, status: int, words: str) -> None:
    """The error page of a failed linking flow: says so, and leads back to /account."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    text = text_of(response)
    assert words in text, response.text[:3000]
    assert "<title>Not linked" in text and "Sign-in failed" not in text
    assert 'href="/account"' in text and "Back to your account" in text
    assert "Back to sign in" not in text


def cookie_cleared(response: httpx.Response) -> bool:
    found = set_cookies(response).get(COOKIE)
    return found is not None and found.value in ("", '""')


# --- the state cookie -----------------------------------------------------------------------


async def test_callbacks_without_the_right_state_land_on_a_page(site: Site) -> None:
    # The flow's cookie: HttpOnly, Lax, short-lived, sealed.
    response = await site.client.get("/oauth/corp/authorize")
    assert response.status_code == 303
    cookie = set_cookies(response)[COOKIE]
    assert "httponly" in cookie.attributes
    assert cookie.attributes["samesite"].lower() == "lax"
    assert cookie.attributes["path"] == "/"
    assert int(cookie.attributes["max-age"]) == LIFETIME_SECONDS
    target = query_of(response.headers["location"])
    assert target["code_challenge_method"] == "S256"
    assert target["state"] and target["nonce"] and target["code_challenge"]
    assert target["state"] not in cookie.value  # sealed, not readable
    login, _ = corp_account(site, "st")
    # No cookie at all.
    site.client.cookies.clear()
    bare = await site.client.get("/oauth/corp/callback?state=abc&code=def")
    assert_failure_page(bare, 400, STALE)
    # The cookie of a GitHub flow brought to corp's callback: refused, the cookie kept.
    github_state = query_of(await site.start("github"))["state"]
    crossed = await site.client.get(f"/oauth/corp/callback?state={github_state}&code=x")
    assert_failure_page(crossed, 400, STALE)
    assert COOKIE not in set_cookies(crossed)
    # A tampered state: refused, but the browser's own flow stays usable.
    callback = await site.provider_answer("corp", login)
    tampered = await site.client.get(with_query(callback, state=secrets.token_urlsafe(32)))
    assert_failure_page(tampered, 400, STALE)
    assert COOKIE not in set_cookies(tampered)
    assert (await site.me()).status_code == 401
    sealed = site.client.cookies.get(COOKIE)
    assert sealed
    ok = await site.client.get(callback)
    assert ok.status_code == 303, ok.text
    assert cookie_cleared(ok)
    assert (await site.me()).json()["username"] == login
    # The same callback again, even with the flow's cookie put back: spent.
    await site.sign_out()
    site.client.cookies.set(COOKIE, sealed)
    replayed = await site.client.get(callback)
    assert_failure_page(replayed, 400, STALE)
    assert cookie_cleared(replayed)  # a spent flow's cookie is of no more use
    assert (await site.me()).status_code == 401
    # The spent code in a fresh flow of this browser: the provider refuses it.
    fresh_state = query_of(await site.start("corp"))["state"]
    reused = await site.client.get(with_query(callback, state=fresh_state))
    assert_failure_page(reused, 400, REFUSED)
    assert (await site.me()).status_code == 401
    found = await reasons(site)
    assert found[:4] == ["cookie", "cookie", "state", "replayed"]
    assert "invalid_grant" in found[4]


async def test_declined_codeless_and_unknown_provider_callbacks_land_on_a_page(site: Site) -> None:
    login, _ = corp_account(site, "deny")
    denied = await site.client.get(await site.provider_answer("corp", login, deny=True))
    assert_failure_page(denied, 400, "You did not allow Corp to sign you in here")
    assert cookie_cleared(denied)
    # GitHub's Cancel too.
    gh_id = secrets.randbelow(10**9)
    site.github.add_user(gh_id, new_login("gh"))
    cancelled = await site.client.get(await site.provider_answer("github", str(gh_id), deny=True))
    assert_failure_page(cancelled, 400, "You did not allow GitHub to sign you in here")
    # A callback with the right state but no code.
    state = query_of(await site.start("corp"))["state"]
    codeless = await site.client.get(f"/oauth/corp/callback?state={state}")
    assert_failure_page(codeless, 400, REFUSED)
    assert (await site.me()).status_code == 401
    assert await reasons(site) == [
        "provider said access_denied",
        "provider said access_denied",
        "provider said no code",
    ]
    assert await site.count(OAuthIdentity) == 0
    # An unknown provider: a 404 page.
    for path in ("/oauth/nope/authorize", "/oauth/nope/callback?state=a&code=b"):
        response = await site.client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.headers["content-type"].startswith("text/html"), path
        assert "No such sign-in provider" in response.text


async def test_an_expired_flow_lands_on_a_page(site: Site) -> None:
    clock = freeze(site.harness)
    login, _ = corp_account(site, "late")
    callback = await site.provider_answer("corp", login)
    clock.advance(seconds=LIFETIME_SECONDS + 1)
    late = await site.client.get(callback)
    assert_failure_page(late, 400, STALE)
    assert COOKIE not in set_cookies(late)  # left to expire, as another tab's might be
    assert (await site.me()).status_code == 401
    assert await reasons(site) == ["cookie"]
    # Just in time works.
    callback = await site.provider_answer("corp", login)
    clock.advance(seconds=LIFETIME_SECONDS - 5)
    assert (await site.client.get(callback)).status_code == 303


async def test_a_provider_down_at_either_end_is_a_502_page(
    make_site: MakeSite, own_provider: OIDCProvider
) -> None:
    site = await make_site(oidc=own_provider)
    login, _ = corp_account(site, "down")
    own_provider.stop()
    response = await site.client.get("/oauth/corp/authorize")
    assert_failure_page(response, 502, "Corp could not be reached")
    assert COOKIE not in site.client.cookies
    own_provider.start()
    callback = await site.provider_answer("corp", login)
    own_provider.stop()
    response = await site.client.get(callback)
    assert_failure_page(response, 502, "Corp could not be reached")
    assert cookie_cleared(response)
    assert (await site.me()).status_code == 401
    (reason,) = await reasons(site)
    assert reason.startswith("token endpoint:")
    # Back up: a new sign-in works.
    own_provider.start()
    assert (await site.sign_in("corp", login)).status_code == 303
    assert (await site.me()).json()["username"] == login


# --- next -----------------------------------------------------------------------------------


async def test_next_is_followed_only_to_this_site(site: Site) -> None:
    login, _ = corp_account(site, "next")
    for wanted, landing in [
        ("/account", "/account"),
        ("/users/me?x=1", "/users/me?x=1"),
        ("https://evil.example/", "/account"),
        ("//evil.example/path", "/account"),
        ("/\\evil.example", "/account"),
    ]:
        response = await site.sign_in("corp", login, next_=wanted)
        assert response.status_code == 303, response.text
        assert response.headers["location"] == landing, wanted
        await site.sign_out()


# --- linking and unlinking from /account ------------------------------------------------------


async def test_link_and_unlink_from_the_account_page(site: Site) -> None:
    name = new_login("acct")
    await site.harness.create_user(name)
    login, email = corp_account(site, "lk")
    # Without the CSRF token: refused, no flow started.
    await sign_in_with_password(site, name)
    refused = await post_account_form(
        site, "/account/oauth/corp/link", csrf=False, password=PASSWORD
    )
    assert refused.status_code == 403
    assert "CSRF token missing or invalid" in refused.text
    assert COOKIE not in site.client.cookies
    await site.sign_out()
    # Linked.
    linked = await link_corp(site, name, login)
    assert linked.status_code == 303, linked.text
    assert linked.headers["location"] == "/account?notice=oauth_linked"
    (row,) = await site.identities()
    assert (row.provider, row.subject, row.email) == ("corp", login, email)
    account = await site.client.get("/account")
    assert f"Linked as {email}" in account.text
    assert "Unlink Corp" in account.text
    (event,) = await site.events("oauth_linked")
    assert event.user_id == row.user_id
    assert event.detail is not None and event.detail["by"] == "account"
    assert event.detail["provider"] == "corp"
    # A second corp account cannot be linked beside the first.
    second, _ = corp_account(site, "lk2")
    start = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    other = await site.client.get(await site.answer_to(start.headers["location"], second))
    assert other.status_code == 409, other.text
    assert "Another account of this provider is already linked" in text_of(other)
    assert [r.subject for r in await site.identities()] == [login]
    # The identity now signs in to that account.
    await site.sign_out()
    assert (await site.sign_in("corp", login)).status_code == 303
    assert (await site.me()).json()["username"] == name
    # Unlinked (the account has a password left).
    unlinked = await post_account_form(site, "/account/oauth/corp/unlink")
    assert unlinked.status_code == 303, unlinked.text
    assert unlinked.headers["location"] == "/account?notice=oauth_unlinked"
    assert await site.identities() == []
    (event,) = await site.events("oauth_unlinked")
    assert event.user_id == row.user_id
    assert event.detail is not None and event.detail["provider"] == "corp"
    # Not linked (any more), or no such provider: 404 on the account page.
    again = await post_account_form(site, "/account/oauth/corp/unlink")
    assert again.status_code == 404, again.text
    assert "This provider is not linked to your account" in again.text
    unknown = await post_account_form(site, "/account/oauth/nope/link", password=PASSWORD)
    assert unknown.status_code == 404, unknown.text
    assert "No such sign-in provider" in unknown.text
    unknown = await post_account_form(site, "/account/oauth/nope/unlink")
    assert unknown.status_code == 404, unknown.text


async def test_an_identity_of_another_user_is_not_linked(site: Site) -> None:
    login, _ = corp_account(site, "theirs")
    assert (await site.sign_in("corp", login)).status_code == 303
    await site.sign_out()
    name = new_login("mine")
    await site.harness.create_user(name)
    response = await link_corp(site, name, login)
    assert response.status_code == 409, response.text
    assert "already linked to another user" in text_of(response)
    assert "Back to your account" in response.text
    (row,) = await site.identities()
    assert row.subject == login
    owner = await site.harness.auth.users.get_by_login(name)
    assert row.user_id != owner.id
    assert await site.events("oauth_linked") == []


async def test_a_link_whose_session_ended_meanwhile_links_nothing(site: Site) -> None:
    name = new_login("gone")
    await site.harness.create_user(name)
    login, _ = corp_account(site, "gn")
    await sign_in_with_password(site, name)
    start = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    assert start.status_code == 303, start.text
    callback = await site.answer_to(start.headers["location"], login)
    # The session ends (signed out elsewhere) while the person is at the provider.
    (current,) = [s for s in (await site.client.get("/users/me/sessions")).json() if s["current"]]
    core = site.harness.auth.core
    async with core.sessionmaker.begin() as db:
        await sessions.revoke(db, int(current["id"]), core.clock())
    response = await site.client.get(callback)
    assert_linking_failure_page(response, 400, "You were signed out before the provider answered")
    assert await site.identities() == []
    assert await site.events("oauth_linked") == []
    assert (await site.me()).status_code == 401


async def test_the_last_way_to_sign_in_cannot_be_unlinked(site: Site) -> None:
    login, email = corp_account(site, "last")
    assert (await site.sign_in("corp", login)).status_code == 303
    account = await site.client.get("/account")
    assert 'id="no-password"' in account.text
    assert 'id="oauth-github-password"' not in account.text  # asks for no password it has not
    refused = await post_account_form(site, "/account/oauth/corp/unlink")
    assert refused.status_code == 409, refused.text
    assert "This is your only way to sign in" in text_of(refused)
    assert len(await site.identities()) == 1
    assert await site.events("oauth_unlinked") == []
    # With GitHub linked too, corp may go.
    gh_id = secrets.randbelow(10**9)
    site.github.add_user(gh_id, new_login("gh"))
    start = await post_account_form(site, "/account/oauth/github/link")
    callback = await site.answer_to(start.headers["location"], str(gh_id))
    linked = await site.client.get(callback)
    assert linked.headers["location"] == "/account?notice=oauth_linked", linked.text
    unlinked = await post_account_form(site, "/account/oauth/corp/unlink")
    assert unlinked.status_code == 303, unlinked.text
    (row,) = await site.identities()
    assert row.provider == "github"
    user = await site.user(email)
    assert user is not None and row.user_id == user.id


# --- audit and hooks ------------------------------------------------------------------------


async def test_a_provider_sign_up_is_audited_and_fires_the_hooks(site: Site) -> None:
    calls: list[tuple[str, UserSnapshot, ClientInfo]] = []
    for event in ("user_registered", "login"):

        def make(name: str) -> Callable[[UserSnapshot, ClientInfo], Awaitable[None]]:
            async def callback(user: UserSnapshot, client: ClientInfo) -> None:
                calls.append((name, user, client))

            return callback

        site.harness.auth.on(event)(make(event))
    login, email = corp_account(site, "hook")
    assert (await site.sign_in("corp", login)).status_code == 303
    await site.harness.auth.hooks.drain(grace=None)
    assert sorted(name for name, _, _ in calls) == ["login", "user_registered"]
    for _, user, _ in calls:
        assert user.username == login and user.email == email
    user_id = calls[0][1].id
    (registered,) = await site.events("registered")
    assert registered.user_id == user_id
    assert registered.detail is not None and registered.detail["provider"] == "corp"
    (login_ok,) = await site.events("login_ok")
    assert login_ok.user_id == user_id
    assert login_ok.detail is not None and login_ok.detail["provider"] == "corp"
    # Signing in again: login fires, user_registered does not.
    await site.sign_out()
    assert (await site.sign_in("corp", login)).status_code == 303
    await site.harness.auth.hooks.drain(grace=None)
    assert sorted(name for name, _, _ in calls) == ["login", "login", "user_registered"]
    assert len(await site.events("registered")) == 1


# --- failed callbacks and the flow's cookie, linking pages, the failure budget ----------------


async def test_a_failed_callback_leaves_the_cookie_of_another_flow_alone(site: Site) -> None:
    """A callback that is not this browser's flow (an old tab's, another provider's, a
    forged state, an unreadable cookie) is refused without ending the flow the browser is in:
    only a spent flow's cookie is cleared."""
    gh_id = secrets.randbelow(10**9)
    site.github.add_user(
        gh_id,
        new_login("tab"),
        emails=[{"email": f"tab{gh_id}@gh.example", "primary": True, "verified": True}],
    )
    # This tab is signing in with GitHub...
    github_callback = await site.provider_answer("github", str(gh_id))
    sealed = site.client.cookies.get(COOKIE)
    assert sealed
    # ...when an old tab's corp callback arrives (its flow long replaced by GitHub's).
    old = await site.client.get(f"/oauth/corp/callback?state={secrets.token_urlsafe(32)}&code=x")
    assert_failure_page(old, 400, STALE)
    assert COOKIE not in set_cookies(old)
    # A forged state at GitHub's own callback.
    forged = await site.client.get(with_query(github_callback, state=secrets.token_urlsafe(32)))
    assert_failure_page(forged, 400, STALE)
    assert COOKIE not in set_cookies(forged)
    assert site.client.cookies.get(COOKIE) == sealed
    # The GitHub flow goes through, and its cookie is cleared.
    ok = await site.client.get(github_callback)
    assert ok.status_code == 303, ok.text
    assert cookie_cleared(ok)
    # An unreadable cookie is left alone too.
    await site.sign_out()
    site.client.cookies.set(COOKIE, "not-a-sealed-flow")
    garbled = await site.client.get("/oauth/corp/callback?state=abc&code=def")
    assert_failure_page(garbled, 400, STALE)
    assert COOKIE not in set_cookies(garbled)
    # As is a callback without any cookie.
    site.client.cookies.clear()
    bare = await site.client.get("/oauth/github/callback?state=abc&code=def")
    assert_failure_page(bare, 400, STALE)
    assert COOKIE not in set_cookies(bare)
    assert await reasons(site) == ["cookie", "state", "cookie", "cookie"]


async def test_failures_of_a_linking_flow_say_so_and_lead_back_to_the_account(
    site: Site,
) -> None:
    name = new_login("lnk")
    await site.harness.create_user(name)
    login, _ = corp_account(site, "lf")
    await sign_in_with_password(site, name)
    # Declined at the provider.
    start = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    assert start.status_code == 303, start.text
    callback = await site.answer_to(start.headers["location"], login, deny=True)
    declined = await site.client.get(callback)
    assert_linking_failure_page(
        declined, 400, "You did not allow Corp to link your account. Nothing has changed."
    )
    # Back without a code.
    start = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    state = query_of(start.headers["location"])["state"]
    codeless = await site.client.get(f"/oauth/corp/callback?state={state}")
    assert_linking_failure_page(codeless, 400, REFUSED)
    # A code the provider refuses (the declined flow's callback, given a fresh flow's state).
    start = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    linked_once = await site.answer_to(start.headers["location"], login)
    assert (await site.client.get(linked_once)).status_code == 303
    assert (await post_account_form(site, "/account/oauth/corp/unlink")).status_code == 303
    start = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    state = query_of(start.headers["location"])["state"]
    reused = await site.client.get(with_query(linked_once, state=state))
    assert_linking_failure_page(reused, 400, REFUSED)
    # Nothing linked; still signed in.
    assert await site.identities() == []
    assert (await site.me()).json()["username"] == name


async def test_declining_spends_the_failure_budget(make_site: MakeSite) -> None:
    """Each callback writes the trail: a flood of declines meets the 429 as forged callbacks
    do (each here with a valid flow of its own)."""
    site = await make_site(rate_limit_login_failures="3/minute")
    answers = []
    for _ in range(4):
        state = query_of(await site.start("corp"))["state"]
        answers.append(
            await site.client.get(
                f"/oauth/corp/callback?state={state}&error=access_denied&error_description=no"
            )
        )
    for declined in answers[:3]:
        assert_failure_page(declined, 400, "You did not allow Corp to sign you in here")
    flooded = answers[3]
    assert flooded.status_code == 429, flooded.text
    assert flooded.headers["content-type"].startswith("text/html")
    assert "Too many attempts" in text_of(flooded)
    assert int(flooded.headers["retry-after"]) > 0
    assert await reasons(site) == ["provider said access_denied"] * 3


async def test_linking_from_the_account_asks_for_the_password(make_site: MakeSite) -> None:
    site = await make_site(login_max_failures=3, login_lockout_minutes=15)
    name = new_login("pwl")
    await site.harness.create_user(name)
    await sign_in_with_password(site, name)
    account = await site.client.get("/account")
    assert 'id="oauth-corp-password"' in account.text
    # None (or one too long to be a password): 422, the page says why; no flow started.
    for given in (None, "", "x" * 4097):
        action = "/account/oauth/corp/link"
        if given is None:
            missing = await post_account_form(site, action)
        else:
            missing = await post_account_form(site, action, password=given)
        assert missing.status_code == 422, missing.text
        assert "Enter your password to link it." in text_of(missing)
    assert COOKIE not in site.client.cookies
    assert await site.events("password_failed") == []
    # Wrong: 400, and a failed login for the account's lockout.
    for _ in range(3):
        wrong = await post_account_form(site, "/account/oauth/corp/link", password="wrong!")
        assert wrong.status_code == 400, wrong.text
        assert "Incorrect password" in text_of(wrong)
    assert COOKIE not in site.client.cookies
    assert len(await site.events("password_failed")) == 3
    assert len(await site.events("lockout")) == 1
    # Locked: even the right password waits.
    locked = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    assert locked.status_code == 429, locked.text
    assert int(locked.headers["retry-after"]) > 0
    assert COOKIE not in site.client.cookies
    # Another account, the right password: off to the provider.
    await site.sign_out()
    other = new_login("pwr")
    await site.harness.create_user(other)
    await sign_in_with_password(site, other)
    start = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    assert start.status_code == 303, start.text
    assert start.headers["location"].startswith(site.oidc.issuer)
    assert site.client.cookies.get(COOKIE)
    assert await site.identities() == []


# --- the token endpoint's answer ------------------------------------------------------------


class TokenEndpoint:
    """A provider on 127.0.0.1 whose discovery names a token endpoint that answers what the
    test sets, streamed without a Content-Length (read until the connection closes). The
    browser is never sent to its authorization endpoint: a test calls the callback itself."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.body = b"{}"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, status: int, document: Any) -> None:
        self.status = status
        self.body = document if isinstance(document, bytes) else json.dumps(document).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/openid-configuration":
                    self._send(404, b"{}")
                    return
                issuer = endpoint.issuer
                document = {
                    "issuer": issuer,
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token",
                    "jwks_uri": f"{issuer}/jwks",
                }
                self._send(200, json.dumps(document).encode())

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._send(endpoint.status, endpoint.body)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for start in range(0, len(body), 64 * 1024):
                        self.wfile.write(body[start : start + 64 * 1024])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what a cap does

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> TokenEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def token_endpoint() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as endpoint:
        yield endpoint


async def test_a_token_endpoint_answer_too_large_or_with_a_forged_code_lands_on_a_page(
    make_harness: Callable[..., Awaitable[Harness]],
    oidc_provider: OIDCProvider,
    github_standin: GitHubStandin,
    token_endpoint: TokenEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = await make_harness(
        public_url=PUBLIC_URL,
        oauth_providers="acme",
        oauth_acme_client_id="acme-client",
        oauth_acme_client_secret="acme-secret",
        oauth_acme_issuer=token_endpoint.issuer,
    )
    site = Site(harness, oidc_provider, github_standin)  # only its helpers: acme is the provider

    async def callback(start: httpx.Response) -> httpx.Response:
        assert start.status_code == 303, start.text
        assert start.headers["location"].startswith(f"{token_endpoint.issuer}/authorize?")
        state = query_of(start.headers["location"])["state"]
        return await site.client.get(f"/oauth/acme/callback?state={state}&code=a-code")

    # Over 512 KiB (never read whole): the provider failed.
    padding = "x" * MAX_DOCUMENT_BYTES
    token_endpoint.answer(200, {"access_token": "t", "token_type": "bearer", "pad": padding})
    large = await callback(await site.client.get("/oauth/acme/authorize"))
    assert_failure_page(large, 502, "Acme could not be reached")
    # An OAuth error whose code carries a line break and markup: refused, the code cleaned.
    token_endpoint.answer(
        400, {"error": "bad\nthing<script>", "error_description": "x\r\nForged: line"}
    )
    forged = await callback(await site.client.get("/oauth/acme/authorize"))
    assert_failure_page(forged, 400, "Acme did not confirm it was you. Please start again.")
    assert "thing<script>" not in forged.text
    # A JSON value that is no code at all.
    token_endpoint.answer(400, {"error": {"nested": ["x"]}})
    odd = await callback(await site.client.get("/oauth/acme/authorize"))
    assert_failure_page(odd, 400, "Acme did not confirm it was you.")
    # The client refused (a wrong secret): the deployment's fault, a 502 and a warning naming
    # the variables to check.
    token_endpoint.answer(401, {"error": "invalid_client"})
    with caplog.at_level(logging.WARNING, logger="authdb.oauth"):
        refused = await callback(await site.client.get("/oauth/acme/authorize"))
    assert_failure_page(refused, 502, "Acme could not be reached")
    (warning,) = [r.getMessage() for r in caplog.records if "refused the client" in r.getMessage()]
    assert "AUTHDB_OAUTH_ACME_CLIENT_ID" in warning and "AUTHDB_OAUTH_ACME_CLIENT_SECRET" in warning
    assert "acme-secret" not in warning
    # The same from /account, linking: the pages say so.
    name = new_login("acme")
    await harness.create_user(name)
    await sign_in_with_password(site, name)
    token_endpoint.answer(200, {"access_token": "t", "pad": padding})
    start = await post_account_form(site, "/account/oauth/acme/link", password=PASSWORD)
    assert_linking_failure_page(await callback(start), 502, "Acme could not be reached")
    events = sorted(await site.events("oauth_failed"), key=lambda e: e.id)
    found = [str((e.detail or {})["reason"]) for e in events]
    assert found == [
        "token endpoint: answer too large",
        "the provider answered badthingscript",
        "the provider answered an error",
        "the provider answered invalid_client",
        "token endpoint: answer too large",
    ]
    for reason in found:
        assert "\n" not in reason and "\r" not in reason and "<" not in reason
    assert await site.identities() == []
