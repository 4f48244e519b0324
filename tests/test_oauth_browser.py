"""Sign-in with another provider in a real browser: headless Chromium against the real
`authdb serve`, a real OpenID Connect provider (oidc-provider, Node) and the GitHub stand-in,
on SQLite and PostgreSQL.

What the person sees is checked on the pages; what the server did, through the API with the
browser's own cookies (``GET /users/me``) or with a password (``/token``). Each browser context
may talk only to the site and its providers and must log no console error (a Content-Security-
Policy violation logs one: the account page's link form is redirected to the provider, which
Chromium checks against ``form-action``).

The OIDC provider keeps its session per browser context: a fresh context shows its sign-in page,
a second sign-in in the same context goes straight back to the site.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pyotp
import pytest

pytest.register_assert_rewrite("tests.browser", "tests.oauth_browser_helpers")

from playwright.sync_api import (  # noqa: E402
    Browser,
    Page,
    expect,
)

from tests.browser import DESKTOP, PHONE, Inbox, guarded_contexts  # noqa: E402
from tests.conftest import PASSWORD  # noqa: E402
from tests.github_standin import GitHubStandin  # noqa: E402
from tests.oauth_browser_helpers import (  # noqa: E402
    EXISTS,
    FLOW_COOKIE,
    LINK_PASSWORD_MISSING,
    SESSION_COOKIE,
    STALE,
    UNREACHABLE,
    WRONG_PASSWORD,
    NewContext,
    OAuthSite,
    cookies,
    password_user,
    serve,
    with_query,
)
from tests.oauth_servers import OIDCProvider, start_oidc_provider  # noqa: E402

pytest_plugins = ["tests.browser", "tests.oauth_servers"]

NEW_PASSWORD = "a brand new and rather long passphrase"
LINKED_NOTICE = "The provider has been linked"
UNLINKED_NOTICE = "The provider has been unlinked"
DOCS = Path(__file__).resolve().parent.parent / "docs"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spare_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    """The module's own OIDC provider, for the test that takes it down."""
    provider = start_oidc_provider(state_dir=tmp_path_factory.mktemp("oidc-spare"))
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def oauth_site(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    page_mail: Inbox,
    oidc_provider: OIDCProvider,
    github_standin: GitHubStandin,
    spare_provider: OIDCProvider,
) -> Iterator[OAuthSite]:
    backend = str(request.param)
    workdir = tmp_path_factory.mktemp(f"oauth-serve-{backend}")
    with serve(backend, workdir, page_mail, oidc_provider, github_standin, spare_provider) as site:
        yield site


@pytest.fixture
def new_context(chromium: Browser, oauth_site: OAuthSite) -> Iterator[NewContext]:
    """``new_context()``: a fresh browser context on the site; all are closed and checked after.

    Requests to an origin other than the site's and its providers' are aborted and fail the
    test; so does a console error.
    """
    with guarded_contexts(chromium, oauth_site.base, oauth_site.origins) as new:
        yield new


@pytest.fixture
def page(new_context: NewContext) -> Page:
    """A page in a fresh browser context (so a fresh session at the providers too)."""
    return new_context().new_page()


# --- helpers ----------------------------------------------------------------------------------


def _totp(secret: str, steps_ahead: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time(), counter_offset=steps_ahead)


def _enable_mfa(site: OAuthSite, username: str) -> str:
    """TOTP on for ``username`` through the API; returns the secret (the confirming code's
    step is spent)."""
    access = site.access_token(username, PASSWORD)
    headers = {"Authorization": f"Bearer {access}"}
    setup = httpx.post(
        site.url("/users/me/mfa/totp/setup"), json={"password": PASSWORD}, headers=headers
    )
    assert setup.status_code == 200, setup.text
    secret = str(setup.json()["secret"])
    confirm = httpx.post(
        site.url("/users/me/mfa/totp/confirm"), json={"code": _totp(secret)}, headers=headers
    )
    assert confirm.status_code == 200, confirm.text
    return secret


def _form_action(csp: str) -> list[str]:
    for directive in csp.split(";"):
        name, *values = directive.split()
        if name == "form-action":
            return values
    raise AssertionError(f"no form-action in {csp!r}")


# --- 1, 2: sign up, then sign in again ----------------------------------------------------------


def test_sign_up_then_sign_in_again_with_the_oidc_provider(
    oauth_site: OAuthSite, page: Page, new_context: NewContext
) -> None:
    site = oauth_site
    login, address = site.corp_account("ada")

    page.goto("/login")
    button = page.locator("a.provider-button[data-provider=corp]")
    expect(button).to_have_text("Continue with Corp")
    button.click()
    site.at_provider(page, "corp", login)
    site.expect_account(page)
    expect(page.locator("#profile-username")).to_have_value(login)
    row = site.provider_row(page, "corp")
    expect(row).to_contain_text(f"Linked as {address}")
    expect(row.get_by_role("button", name="Unlink Corp")).to_be_visible()
    github_row = site.provider_row(page, "github")
    expect(github_row).to_contain_text("Not linked")
    # Nothing to confirm linking with: no password field.
    expect(github_row.locator("input[type=password]")).to_have_count(0)
    site.snap_part(page, "section[aria-labelledby=oauth-heading]", "oauth-account-providers")
    # The flow's cookie is gone once it has been used.
    assert FLOW_COOKIE not in cookies(page.context)
    me = site.me_json(page.context)
    assert (me["username"], me["email"], me["is_verified"]) == (login, address, True)
    # No usable password: the provider is its only way in.
    assert site.token(login, "!").status_code == 401
    expect(page.locator("#no-password")).to_be_visible()
    notice = page.locator("#no-password-notice")
    expect(notice).to_contain_text("your account has no password yet")
    expect(notice.get_by_role("link", name="set one by email")).to_have_attribute(
        "href", re.compile(r"/forgot-password$")
    )

    # Out, and in again with the same provider: the same account, not a second one.
    site.sign_out(page)
    site.assert_signed_out(page.context)
    site.continue_with(page, "corp")  # the provider remembers this browser: no page there
    site.expect_account(page)
    again = site.me_json(page.context)
    assert again["id"] == me["id"] and again["username"] == login

    # In a browser the provider has never seen: its page, then the same account.
    elsewhere = new_context().new_page()
    site.continue_with(elsewhere, "corp")
    site.at_provider(elsewhere, "corp", login)
    site.expect_account(elsewhere)
    assert site.me_json(elsewhere.context)["id"] == me["id"]


def test_sign_up_then_sign_in_again_with_github(
    oauth_site: OAuthSite, page: Page, new_context: NewContext
) -> None:
    site = oauth_site
    login, address = site.github_user("octo", verified=True)

    # From the register page this time.
    site.continue_with(page, "github", start="/register")
    site.at_provider(page, "github", login)
    site.expect_account(page)
    me = site.me_json(page.context)
    assert (me["username"], me["email"], me["is_verified"]) == (login, address, True)
    expect(site.provider_row(page, "github")).to_contain_text(f"Linked as {address}")

    # GitHub shows its page every time; the same GitHub user is the same account.
    site.sign_out(page)
    site.continue_with(page, "github")
    site.at_provider(page, "github", login)
    site.expect_account(page)
    assert site.me_json(page.context)["id"] == me["id"]

    # And in another browser too.
    elsewhere = new_context().new_page()
    site.continue_with(elsewhere, "github")
    site.at_provider(elsewhere, "github", login)
    site.expect_account(elsewhere)
    assert site.me_json(elsewhere.context)["id"] == me["id"]


def test_github_user_without_a_verified_email_gets_an_unverified_account(
    oauth_site: OAuthSite, page: Page, new_context: NewContext
) -> None:
    """The address is verified the usual way, by a link in the mail: followed in the browser
    signed in to the account, it keeps the GitHub link (made from an address GitHub had not
    verified, it was unconfirmed until then)."""
    site = oauth_site
    login, address = site.github_user("unver", verified=False)
    site.continue_with(page, "github")
    site.at_provider(page, "github", login)
    site.expect_account(page)
    me = site.me_json(page.context)
    assert (me["username"], me["email"], me["is_verified"]) == (login, address, False)
    expect(page.locator(".current-email .badge-warning")).to_have_text("Not verified")
    expect(site.provider_row(page, "github")).to_contain_text(f"Linked as {address}")

    page.goto(site.inbox.link(address, "/verify"))
    page.get_by_role("button", name="Verify my email address").click()
    expect(page.get_by_role("status")).to_be_visible()
    assert site.me_json(page.context)["is_verified"] is True
    page.goto("/account")
    expect(site.provider_row(page, "github")).to_contain_text(f"Linked as {address}")

    # Still a way in: out, and in again with GitHub, here and in another browser.
    site.sign_out(page)
    site.continue_with(page, "github")
    site.at_provider(page, "github", login)
    site.expect_account(page)
    assert site.me_json(page.context)["id"] == me["id"]
    elsewhere = new_context().new_page()
    site.continue_with(elsewhere, "github")
    site.at_provider(elsewhere, "github", login)
    site.expect_account(elsewhere)
    assert site.me_json(elsewhere.context)["id"] == me["id"]


@pytest.mark.parametrize("proof", ["reset", "verified_signed_out"])
def test_proving_the_address_elsewhere_drops_an_unconfirmed_link(
    oauth_site: OAuthSite, page: Page, new_context: NewContext, proof: str
) -> None:
    """Whoever owns the mailbox of an account made from an address GitHub had not verified
    (a password reset, or the verification link opened in a browser not signed in to the
    account) takes it over: the GitHub link is dropped."""
    site = oauth_site
    login, address = site.github_user("drop", verified=False)
    site.continue_with(page, "github")
    site.at_provider(page, "github", login)
    site.expect_account(page)
    me = site.me_json(page.context)

    owner = new_context().new_page()
    if proof == "reset":
        owner.goto("/forgot-password")
        owner.locator("#email").fill(address)
        site.submit(owner, "#email")
        expect(owner.get_by_role("status")).to_be_visible()
        owner.goto(site.inbox.link(address, "/reset-password"))
        owner.locator("#password").fill(NEW_PASSWORD)
        owner.locator("#password_confirm").fill(NEW_PASSWORD)
        site.submit(owner, "#password_confirm")
        expect(owner.get_by_role("status")).to_be_visible()
        # The reset signed the GitHub browser out: in with the new password.
        site.sign_in(page, login, NEW_PASSWORD)
    else:
        owner.goto(site.inbox.link(address, "/verify"))
        owner.get_by_role("button", name="Verify my email address").click()
        expect(owner.get_by_role("status")).to_be_visible()
        page.goto("/account")
    site.expect_account(page)
    assert site.me_json(page.context)["id"] == me["id"]
    row = site.provider_row(page, "github")
    expect(row).to_contain_text("Not linked")

    # GitHub is no way into it any more: its address belongs to an account, so sign in and link.
    site.sign_out(page)
    site.continue_with(page, "github")
    with page.expect_response(lambda r: r.url.startswith(site.callback_prefix("github"))) as got:
        site.at_provider(page, "github", login)
    assert got.value.status == 409
    expect(page.get_by_role("alert")).to_contain_text(EXISTS)
    site.assert_signed_out(page.context)


# --- 3, 4, 5: state, the flow's cookie, replay ------------------------------------------------


def test_a_tampered_state_is_refused_and_the_real_callback_still_works(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    login, _ = site.corp_account("tamper")
    hold = site.hold_callbacks(page.context)
    site.continue_with(page, "corp")
    site.at_provider(page, "corp", login)
    callback = hold.wait(page)
    assert callback.startswith(site.callback_prefix("corp"))
    hold.release()

    tampered = with_query(callback, state=secrets.token_urlsafe(32))
    response = page.goto(tampered)
    assert response is not None and response.status == 400
    site.expect_error_page(page, STALE)
    site.snap(page, "oauth-error-stale")
    site.assert_signed_out(page.context)
    # A wrong state may be an attacker's: this browser's own flow is kept...
    assert FLOW_COOKIE in cookies(page.context)
    # ...as it is when the callback is another provider's (the cookie is Corp's flow).
    foreign = callback.replace("/oauth/corp/callback?", "/oauth/github/callback?")
    response = page.goto(foreign)
    assert response is not None and response.status == 400
    site.expect_error_page(page, STALE)
    assert FLOW_COOKIE in cookies(page.context)

    # So the callback the provider really sent completes the sign-in.
    response = page.goto(callback)
    assert response is not None and response.status == 200
    site.expect_account(page)
    assert site.me_json(page.context)["username"] == login
    assert FLOW_COOKIE not in cookies(page.context)


def test_a_callback_opened_in_another_browser_is_refused(
    oauth_site: OAuthSite, page: Page, new_context: NewContext
) -> None:
    site = oauth_site
    login, _ = site.corp_account("xbrowser")
    hold = site.hold_callbacks(page.context)
    site.continue_with(page, "corp")
    site.at_provider(page, "corp", login)
    callback = hold.wait(page)
    hold.release()

    # Another browser (no flow cookie): refused, nobody signed in there.
    other = new_context().new_page()
    response = other.goto(callback)
    assert response is not None and response.status == 400
    site.expect_error_page(other, STALE)
    site.assert_signed_out(other.context)

    # The browser that started it can still finish it (the failed attempt spent nothing).
    page.goto(callback)
    site.expect_account(page)
    assert site.me_json(page.context)["username"] == login
    site.assert_signed_out(other.context)


def test_a_replayed_callback_is_refused_and_the_session_stays(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    login, _ = site.corp_account("replay")
    hold = site.hold_callbacks(page.context)
    site.continue_with(page, "corp")
    site.at_provider(page, "corp", login)
    callback = hold.wait(page)
    hold.release()
    flow_cookie = cookies(page.context)[FLOW_COOKIE]

    page.goto(callback)
    site.expect_account(page)
    me = site.me_json(page.context)
    session = cookies(page.context)[SESSION_COOKIE]["value"]
    assert FLOW_COOKIE not in cookies(page.context)

    # Again, without the flow's cookie (cleared by the sign-in): refused.
    response = page.goto(callback)
    assert response is not None and response.status == 400
    site.expect_error_page(page, STALE)
    # And with it (kept by an attacker, say): refused too, and this spent flow's cookie is
    # cleared.
    page.context.add_cookies([flow_cookie])  # type: ignore[list-item]
    response = page.goto(callback)
    assert response is not None and response.status == 400
    site.expect_error_page(page, STALE)
    assert FLOW_COOKIE not in cookies(page.context)
    # The first sign-in's session is untouched.
    assert cookies(page.context)[SESSION_COOKIE]["value"] == session
    assert site.me_json(page.context)["id"] == me["id"]
    page.goto("/account")
    site.expect_account(page)


# --- 6: denied consent ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["corp", "github"])
def test_denied_consent_says_so_and_creates_nothing(
    oauth_site: OAuthSite, page: Page, provider: str
) -> None:
    site = oauth_site
    if provider == "corp":
        login, address = site.corp_account("deny")
        label = "Corp"
    else:
        login, address = site.github_user("cancel")
        label = "GitHub"
    site.continue_with(page, provider)
    with page.expect_response(lambda r: r.url.startswith(site.callback_prefix(provider))) as got:
        site.at_provider(page, provider, login, deny=True)
    assert got.value.status == 400
    site.expect_error_page(page, f"You did not allow {label} to sign you in here")
    site.snap(page, f"oauth-error-denied-{provider}")
    site.assert_signed_out(page.context)
    assert FLOW_COOKIE not in cookies(page.context)
    # No account was made: its username and address are both free.
    register = httpx.post(
        site.url("/register"),
        json={"username": login, "email": address, "password": PASSWORD},
        timeout=30,
    )
    assert register.status_code == 201, register.text


# --- 7: provider down -------------------------------------------------------------------------


def test_a_provider_that_is_down_gives_a_page_that_says_so(
    oauth_site: OAuthSite, new_context: NewContext
) -> None:
    site, spare = oauth_site, oauth_site.spare
    login, _ = site.corp_account("spare")  # an account name, added to the spare provider:
    spare.add_account(login, f"{login}@spare.example", preferred_username=login)
    page = new_context().new_page()
    spare.stop()
    try:
        # Down before the server ever reached it: the button's redirect cannot be made.
        page.goto("/login")
        with page.expect_response(lambda r: "/oauth/spare/authorize" in r.url) as got:
            page.locator("a.provider-button[data-provider=spare]").click()
        assert got.value.status == 502
        site.expect_error_page(page, f"Spare {UNREACHABLE}")
        site.snap(page, "oauth-error-unreachable")
        site.assert_signed_out(page.context)
    finally:
        spare.start()

    # Back up: the same button works.
    site.continue_with(page, "spare")
    site.at_provider(page, "spare", login)
    site.expect_account(page)
    me = site.me_json(page.context)
    assert me["email"] == f"{login}@spare.example"

    # Down between the provider's page and the callback: the code cannot be exchanged.
    page = new_context().new_page()
    hold = site.hold_callbacks(page.context)
    site.continue_with(page, "spare")
    site.at_provider(page, "spare", login)
    callback = hold.wait(page)
    hold.release()
    spare.stop()
    try:
        response = page.goto(callback)
        assert response is not None and response.status == 502
        site.expect_error_page(page, f"Spare {UNREACHABLE}")
        site.assert_signed_out(page.context)
    finally:
        spare.start()
    site.continue_with(page, "spare")
    site.at_provider(page, "spare", login)  # a restarted provider has forgotten its sessions
    site.expect_account(page)
    assert site.me_json(page.context)["id"] == me["id"]


# --- 8, 11: an existing account's email, then linking from /account -------------------------------


def test_an_existing_accounts_email_asks_to_sign_in_and_link(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    username, address = password_user(site, "linkme")
    login, _ = site.corp_account("corplink", email=address)

    page.goto("/login?" + urlencode({"next": "/account?from=corp"}))
    page.locator("a.provider-button[data-provider=corp]").click()
    with page.expect_response(lambda r: r.url.startswith(site.callback_prefix("corp"))) as got:
        site.at_provider(page, "corp", login)
    assert got.value.status == 409
    expect(page).to_have_url(re.compile(re.escape(site.callback_prefix("corp"))))
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(EXISTS)
    expect(alert).to_contain_text("then link Corp from your account page")
    expect(page.locator("#password")).to_be_visible()  # the sign-in form, right there
    # ...which still leads where the person was going.
    expect(page.locator("input[name=next]")).to_have_value("/account?from=corp")
    site.snap(page, "oauth-login-exists")
    site.assert_signed_out(page.context)

    # Sign in with the password: nothing was linked.
    page.get_by_label("Username or email").fill(username)
    page.locator("#password").fill(PASSWORD)
    site.submit(page, "#password")
    expect(page).to_have_url(site.url("/account?from=corp"))
    me = site.me_json(page.context)
    row = site.provider_row(page, "corp")
    expect(row).to_contain_text("Not linked")

    # The account page lets forms go to the providers (CSP form-action also governs a form's
    # redirect, which Chromium enforces): no console error on the way (checked after the test).
    response = page.goto("/account")
    assert response is not None
    form_action = _form_action(response.headers["content-security-policy"])
    assert site.corp.issuer in form_action, form_action
    assert site.github.base_url in form_action, form_action

    # Link Corp: the provider already knows this browser, so it answers at once.
    with page.expect_request(lambda r: r.url.startswith(site.corp.issuer + "/")):
        site.link_from_account(page, "corp")
    site.expect_account(page)
    assert parse_qs(urlsplit(page.url).query).get("notice") == ["oauth_linked"]
    site.expect_notice(page, LINKED_NOTICE)
    expect(row).to_contain_text(f"Linked as {address}")
    assert site.me_json(page.context)["id"] == me["id"]

    # Out; "Continue with Corp" is now this account.
    site.sign_out(page)
    site.continue_with(page, "corp")
    site.expect_account(page)
    assert site.me_json(page.context)["id"] == me["id"]
    expect(page.locator("#profile-username")).to_have_value(username)


def test_linking_at_a_provider_with_its_own_sign_in_page(
    oauth_site: OAuthSite, page: Page, new_context: NewContext
) -> None:
    """Linking GitHub: its page is shown, the form's redirect leaves for its origin."""
    site = oauth_site
    username, _ = password_user(site, "ghlink")
    login, _ = site.github_user("ghlinked")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    site.link_from_account(page, "github")
    site.at_provider(page, "github", login)
    site.expect_account(page)
    site.expect_notice(page, LINKED_NOTICE)
    expect(site.provider_row(page, "github")).to_contain_text("Linked as")

    # Another browser: GitHub's button signs into this account.
    other = new_context().new_page()
    site.continue_with(other, "github")
    site.at_provider(other, "github", login)
    site.expect_account(other)
    expect(other.locator("#profile-username")).to_have_value(username)


# --- 9: unlinking -----------------------------------------------------------------------------


def test_unlinking_a_provider_from_the_account_page(oauth_site: OAuthSite, page: Page) -> None:
    site = oauth_site
    username, _ = password_user(site, "unlink")
    login, _ = site.corp_account("unlinked")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    row = site.provider_row(page, "corp")
    site.link_from_account(page, "corp")
    site.at_provider(page, "corp", login)
    site.expect_account(page)
    expect(row).to_contain_text("Linked as")

    row.get_by_role("button", name="Unlink Corp").click()
    site.expect_account(page)
    site.expect_notice(page, UNLINKED_NOTICE)
    expect(row).to_contain_text("Not linked")
    expect(row.get_by_role("button", name="Link Corp")).to_be_visible()
    expect(row.locator("input#oauth-corp-password")).to_be_editable()

    # The provider's identity is nobody's now: it makes a new account (the provider still
    # knows this browser).
    site.sign_out(page)
    site.continue_with(page, "corp")
    site.expect_account(page)
    expect(page.locator("#profile-username")).to_have_value(login)


def test_the_last_way_to_sign_in_cannot_be_unlinked_until_a_password_is_set(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    login, address = site.corp_account("lastway")
    site.continue_with(page, "corp")
    site.at_provider(page, "corp", login)
    site.expect_account(page)
    me = site.me_json(page.context)

    # Refused, and the page says why and what to do.
    row = site.provider_row(page, "corp")
    with page.expect_response(lambda r: r.url.endswith("/account/oauth/corp/unlink")) as got:
        row.get_by_role("button", name="Unlink Corp").click()
    assert got.value.status == 409
    section = page.locator("section[aria-labelledby=oauth-heading]")
    expect(section.get_by_role("alert")).to_contain_text("This is your only way to sign in")
    expect(row).to_contain_text("Linked as")
    no_password = page.locator("#no-password")
    expect(no_password).to_contain_text("Your account has no password yet")
    forgot = no_password.get_by_role("link", name=re.compile("Forgot your password"))
    expect(forgot).to_be_visible()
    site.snap_part(page, "section[aria-labelledby=oauth-heading]", "oauth-unlink-refused")

    # Set a password through forgot-password, as the page says.
    forgot.click()
    expect(page).to_have_url(site.url("/forgot-password"))
    page.locator("#email").fill(address)
    site.submit(page, "#email")
    expect(page.get_by_role("status")).to_be_visible()
    page.goto(site.inbox.link(address, "/reset-password"))
    page.locator("#password").fill(NEW_PASSWORD)
    page.locator("#password_confirm").fill(NEW_PASSWORD)
    site.submit(page, "#password_confirm")
    expect(page.get_by_role("status")).to_be_visible()
    assert site.token(login, NEW_PASSWORD).status_code == 200

    # Now there is a password: unlinking works.
    site.sign_in(page, login, NEW_PASSWORD)
    site.expect_account(page)
    assert site.me_json(page.context)["id"] == me["id"]
    expect(page.locator("#no-password")).to_have_count(0)
    row.get_by_role("button", name="Unlink Corp").click()
    site.expect_notice(page, UNLINKED_NOTICE)
    expect(row).to_contain_text("Not linked")
    assert site.token(login, NEW_PASSWORD).status_code == 200


# --- 10: MFA ----------------------------------------------------------------------------------


def test_a_provider_sign_in_asks_for_the_second_factor(oauth_site: OAuthSite, page: Page) -> None:
    site = oauth_site
    username, _ = password_user(site, "mfa")
    login, _ = site.corp_account("mfacorp")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    site.link_from_account(page, "corp")
    site.at_provider(page, "corp", login)
    site.expect_notice(page, LINKED_NOTICE)
    me = site.me_json(page.context)
    site.sign_out(page)
    secret = _enable_mfa(site, username)

    site.continue_with(page, "corp")
    expect(page).to_have_url(site.url("/login/mfa"))
    site.assert_signed_out(page.context)
    page.get_by_label("6-digit code").fill(_totp(secret, 1))  # the confirming step is spent
    page.keyboard.press("Enter")
    site.expect_account(page)
    assert site.me_json(page.context)["id"] == me["id"]


# --- more: next, unknown provider, links that cannot be made -----------------------------------


def test_next_is_carried_through_the_provider_and_only_on_this_site(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    login, _ = site.corp_account("next")
    page.goto("/login?" + urlencode({"next": "/account?from=corp"}))
    button = page.locator("a.provider-button[data-provider=corp]")
    expect(button).to_have_attribute("href", re.compile(r"[?&]next="))
    button.click()
    site.at_provider(page, "corp", login)
    expect(page).to_have_url(site.url("/account?from=corp"))
    site.sign_out(page)

    # Another site's address is not followed: the account page instead.
    page.goto("/login?" + urlencode({"next": "//evil.example/steal"}))
    page.locator("a.provider-button[data-provider=corp]").click()
    expect(page).to_have_url(site.url("/account"))
    assert site.me_json(page.context)["username"] == login


def test_an_unknown_provider_is_a_404_page(oauth_site: OAuthSite, page: Page) -> None:
    site = oauth_site
    for path in ("/oauth/nope/authorize", "/oauth/nope/callback?code=x&state=y"):
        response = page.goto(path)
        assert response is not None and response.status == 404, path
        site.expect_error_page(page, "No such sign-in provider", flow=None)
    site.assert_signed_out(page.context)


def test_an_identity_of_another_account_is_not_linked(
    oauth_site: OAuthSite, new_context: NewContext
) -> None:
    site = oauth_site
    login, _ = site.corp_account("taken")
    first = new_context().new_page()
    site.continue_with(first, "corp")
    site.at_provider(first, "corp", login)
    site.expect_account(first)
    owner = site.me_json(first.context)

    username, _ = password_user(site, "wantslink")
    page = new_context().new_page()
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    site.link_from_account(page, "corp")
    with page.expect_response(lambda r: r.url.startswith(site.callback_prefix("corp"))) as got:
        site.at_provider(page, "corp", login)
    assert got.value.status == 409
    site.expect_error_page(page, "already linked to another user", flow="link")
    page.get_by_role("link", name="Back to your account").click()
    site.expect_account(page)
    expect(site.provider_row(page, "corp")).to_contain_text("Not linked")
    # Corp still signs in to its own account.
    first.goto("/account")
    assert site.me_json(first.context)["id"] == owner["id"]
    site.sign_out(first)
    site.continue_with(first, "corp")
    site.expect_account(first)
    assert site.me_json(first.context)["id"] == owner["id"]


def test_signed_out_before_the_provider_answered_links_nothing(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    username, _ = password_user(site, "leaves")
    login, _ = site.corp_account("leavescorp")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    hold = site.hold_callbacks(page.context)
    site.link_from_account(page, "corp")
    site.at_provider(page, "corp", login)
    callback = hold.wait(page)
    hold.release()
    page.goto("/account")
    site.sign_out(page)

    response = page.goto(callback)
    assert response is not None and response.status == 400
    site.expect_error_page(page, "You were signed out before the provider answered", flow="link")
    site.assert_signed_out(page.context)
    # Nothing was linked: the identity is nobody's, and makes an account of its own.
    site.continue_with(page, "corp")
    site.expect_account(page)
    expect(page.locator("#profile-username")).to_have_value(login)


def test_denied_while_linking_links_nothing(oauth_site: OAuthSite, page: Page) -> None:
    site = oauth_site
    username, _ = password_user(site, "nolink")
    login, _ = site.corp_account("nolinkcorp")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    site.link_from_account(page, "corp")
    with page.expect_response(lambda r: r.url.startswith(site.callback_prefix("corp"))) as got:
        site.at_provider(page, "corp", login, deny=True)
    assert got.value.status == 400
    site.expect_error_page(
        page, "You did not allow Corp to link your account. Nothing has changed.", flow="link"
    )
    site.snap(page, "oauth-error-link-denied")
    assert FLOW_COOKIE not in cookies(page.context)
    page.get_by_role("link", name="Back to your account").click()
    site.expect_account(page)
    expect(site.provider_row(page, "corp")).to_contain_text("Not linked")
    expect(page.locator("#profile-username")).to_have_value(username)


def test_a_callback_without_a_code_while_linking_links_nothing(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    username, _ = password_user(site, "nocode")
    login, _ = site.github_user("nocodegh")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    hold = site.hold_callbacks(page.context)
    site.link_from_account(page, "github")
    site.at_provider(page, "github", login)
    callback = hold.wait(page)
    hold.release()

    parts = urlsplit(callback)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "code"]
    response = page.goto(urlunsplit(parts._replace(query=urlencode(query))))
    assert response is not None and response.status == 400
    site.expect_error_page(
        page, "GitHub did not confirm it was you. Please start again.", flow="link"
    )
    assert FLOW_COOKIE not in cookies(page.context)  # the flow is spent
    # ...so the real callback cannot finish it either.
    response = page.goto(callback)
    assert response is not None and response.status == 400
    site.expect_error_page(page, STALE)
    page.goto("/account")
    expect(site.provider_row(page, "github")).to_contain_text("Not linked")


# --- linking needs the password ---------------------------------------------------------------


def test_linking_with_a_wrong_or_no_password_is_refused_before_the_provider(
    oauth_site: OAuthSite, page: Page
) -> None:
    site = oauth_site
    username, _ = password_user(site, "linkpw")
    login, _ = site.github_user("linkpwgh")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    to_github: list[str] = []
    page.on(
        "request",
        lambda r: to_github.append(r.url) if r.url.startswith(site.github.base_url) else None,
    )
    section = page.locator("section[aria-labelledby=oauth-heading]")
    row = site.provider_row(page, "github")
    field = row.locator("input#oauth-github-password")
    expect(field).to_have_attribute("autocomplete", "current-password")

    # A wrong password: refused on the account page, next to the form.
    with page.expect_response(lambda r: r.url.endswith("/account/oauth/github/link")) as got:
        site.link_from_account(page, "github", "not the password at all")
    assert got.value.status == 400
    expect(section.get_by_role("alert")).to_have_text(WRONG_PASSWORD)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(row).to_contain_text("Not linked")
    site.snap_part(page, "section[aria-labelledby=oauth-heading]", "oauth-link-wrong-password")

    # No password (the browser's own check taken off): asked for it.
    field.evaluate("el => el.removeAttribute('required')")
    with page.expect_response(lambda r: r.url.endswith("/account/oauth/github/link")) as got:
        site.link_from_account(page, "github", "")
    assert got.value.status == 422
    expect(section.get_by_role("alert")).to_have_text(LINK_PASSWORD_MISSING)
    expect(row).to_contain_text("Not linked")
    assert not to_github, to_github
    assert FLOW_COOKIE not in cookies(page.context)

    # The right one: off to GitHub, and linked.
    site.link_from_account(page, "github")
    site.at_provider(page, "github", login)
    site.expect_account(page)
    site.expect_notice(page, LINKED_NOTICE)
    expect(row).to_contain_text("Linked as")
    assert to_github


def test_an_account_made_through_a_provider_links_another_without_a_password(
    oauth_site: OAuthSite, page: Page, new_context: NewContext
) -> None:
    site = oauth_site
    login, _ = site.corp_account("nopw")
    gh_login, _ = site.github_user("nopwgh")
    site.continue_with(page, "corp")
    site.at_provider(page, "corp", login)
    site.expect_account(page)
    me = site.me_json(page.context)

    site.link_from_account(page, "github", password=None)
    site.at_provider(page, "github", gh_login)
    site.expect_account(page)
    site.expect_notice(page, LINKED_NOTICE)
    expect(site.provider_row(page, "github")).to_contain_text("Linked as")

    other = new_context().new_page()
    site.continue_with(other, "github")
    site.at_provider(other, "github", gh_login)
    site.expect_account(other)
    assert site.me_json(other.context)["id"] == me["id"]


# --- screenshots ------------------------------------------------------------------------------


def test_screenshots_of_the_provider_pages(oauth_site: OAuthSite, page: Page) -> None:
    """/login's provider buttons and /account's "Sign-in providers" section (one provider
    linked, the others with their password fields), at phone and desktop size; with
    AUTHDB_UPDATE_DOCS_SCREENSHOTS=1, the docs' two pictures as well (SQLite's run)."""
    site = oauth_site
    docs = os.environ.get("AUTHDB_UPDATE_DOCS_SCREENSHOTS") == "1" and site.backend == "sqlite"
    page.goto("/login")
    expect(page.locator("a.provider-button")).to_have_text(
        ["Continue with Corp", "Continue with GitHub", "Continue with Spare"]
    )
    site.snap(page, "oauth-login-providers")
    if docs:
        page.screenshot(path=DOCS / "pages-login-providers-desktop.png", full_page=True)

    username, _ = password_user(site, "shots")
    login, _ = site.corp_account("shotscorp")
    site.sign_in(page, username, PASSWORD)
    site.expect_account(page)
    site.link_from_account(page, "corp")
    site.at_provider(page, "corp", login)
    site.expect_notice(page, LINKED_NOTICE)
    page.goto("/account")
    section = "section[aria-labelledby=oauth-heading]"
    expect(page.locator("#provider-list input[type=password]")).to_have_count(2)
    site.snap(page, "oauth-account-password")  # the whole page: labels, fits a phone
    site.snap_part(page, section, "oauth-account-providers-password")
    if docs:
        page.set_viewport_size(PHONE)
        page.locator(section).screenshot(path=DOCS / "pages-account-providers-phone.png")
        page.set_viewport_size(DESKTOP)
