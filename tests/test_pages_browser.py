"""The hosted pages in a real browser: Chromium, the real `authdb serve`, real SMTP, both databases.

Everything a person does goes through the UI (click, fill, keyboard); the API and the mailbox
are only used to set up and to check what the pages did. Screenshots of every page, at phone and
desktop size, go to ``$AUTHDB_TEST_ARTIFACTS`` (default ``test-artifacts/screenshots/``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.conftest import PASSWORD

if TYPE_CHECKING:
    from tests.browser import Site

# The fixtures (and their helpers, reached through ``site``) live in tests/browser.py.
pytest_plugins = ["tests.browser"]

NEW_PASSWORD = "a brand new and rather long passphrase"
SESSION_COOKIE = "authdb_session"
CSRF_COOKIE = "authdb_csrf"
MFA_COOKIE = "authdb_mfa"
CSRF_REFUSED = "CSRF token missing or invalid"
THIS_DEVICE = re.compile(r"\bThis device\b")

NewContext = Callable[[], BrowserContext]


def _cookies(context: BrowserContext) -> dict[str, Any]:
    return {cookie["name"]: cookie for cookie in context.cookies()}


def _notice(page: Page) -> None:
    """The page shows a success or info message (role=status) with some text in it."""
    notice = page.get_by_role("status")
    expect(notice).to_be_visible()
    expect(notice).not_to_have_text("")


def _focus(page: Page) -> dict[str, str]:
    """What has the focus, and the styles that would show it."""
    return dict(
        page.evaluate(
            """() => {
              const el = document.activeElement, s = getComputedStyle(el);
              return {tag: el.tagName, id: el.id, outlineStyle: s.outlineStyle,
                      outlineWidth: s.outlineWidth, boxShadow: s.boxShadow};
            }"""
        )
    )


def _focus_is_visible(style: dict[str, str]) -> bool:
    outline = style["outlineStyle"] != "none" and float(style["outlineWidth"][:-2] or 0) > 0
    return outline or style["boxShadow"] != "none"


def test_register_verify_sign_in_and_manage_the_account(site: Site, page: Page) -> None:
    username = site.new_username("ada")
    address = f"{username}@example.com"

    page.goto("/register")
    site.snap(page, "register")
    page.locator("#username").fill(username)
    page.locator("#email").fill(address)
    page.locator("#full_name").fill("Ada Browser")
    page.locator("#password").fill(PASSWORD)
    site.submit(page, "#email")
    _notice(page)
    site.snap(page, "register-done")

    # The emailed link opens a page with a button; opening it (twice, as a mail scanner
    # might) verifies nothing.
    link = site.inbox.link(address, "/verify")
    assert link.startswith(site.url("/verify?token="))
    page.goto(link)
    verify = page.get_by_role("button", name="Verify my email address")
    expect(verify).to_be_visible()
    site.snap(page, "verify")
    access = site.access_token(username, PASSWORD)
    assert site.get("/users/me", access).json()["is_verified"] is False
    page.reload()
    expect(verify).to_be_visible()
    assert site.get("/users/me", access).json()["is_verified"] is False
    verify.click()
    _notice(page)
    site.snap(page, "verify-done")
    assert site.get("/users/me", access).json()["is_verified"] is True

    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#profile-username")).to_have_value(username)
    site.snap(page, "account")

    # Change the password: the old one stops working, the new one works, this browser stays in.
    page.locator("#password-current_password").fill(PASSWORD)
    page.locator("#password-new_password").fill(NEW_PASSWORD)
    page.locator("#password-new_password_confirm").fill(NEW_PASSWORD)
    site.submit(page, "#password-new_password")
    _notice(page)
    expect(page).to_have_url(re.compile(re.escape(site.url("/account"))))
    site.snap(page, "account-password-changed")
    assert site.token(username, PASSWORD).status_code == 401
    # The new password works: that sign-in is a second session, "elsewhere".
    elsewhere = site.access_token(username, NEW_PASSWORD, user_agent="BrowserTest/1.0 elsewhere")

    # Sessions: this browser and the one elsewhere (the password change ended the rest).
    listed = site.get("/users/me/sessions", elsewhere).json()
    assert len(listed) == 2, listed
    elsewhere_id = next(s["id"] for s in listed if s["current"])
    page.goto("/account")
    expect(page.get_by_text(THIS_DEVICE).first).to_be_visible()
    revoke_forms = page.locator("form[action$='/revoke']")
    expect(revoke_forms).to_have_count(1)
    revoke = page.locator(f"form[action$='/{elsewhere_id}/revoke'] button[type=submit]")
    # Its accessible name says which session it ends, not just "Sign out".
    expect(revoke).to_have_accessible_name(re.compile(r"Sign out\b.*\S", re.IGNORECASE))
    site.snap(page, "account-sessions")
    revoke.click()
    _notice(page)
    expect(revoke_forms).to_have_count(0)
    expect(page.get_by_text(THIS_DEVICE).first).to_be_visible()
    assert site.get("/users/me", elsewhere).status_code == 401

    # Sign out ends the cookie's session on the server, not only in this browser.
    old_cookie = _cookies(page.context)[SESSION_COOKIE]["value"]
    sign_out = page.locator("form[action$='/logout']")
    sign_out.get_by_role("button", name="Sign out").click()
    expect(sign_out).to_have_count(0)  # on a signed-out page now
    page.goto("/account")
    expect(page).to_have_url(re.compile(re.escape(site.url("/login")) + r"(\?|$)"))
    replay = {"Cookie": f"{SESSION_COOKIE}={old_cookie}"}
    account = httpx.get(site.url("/account"), headers=replay, timeout=30)
    assert account.is_redirect, account.status_code
    assert urlsplit(account.headers["location"]).path == "/login"
    assert httpx.get(site.url("/users/me"), headers=replay, timeout=30).status_code == 401


def test_forgot_password_then_reset_through_the_emailed_link(site: Site, page: Page) -> None:
    username = site.new_username("bea")
    address = site.create_user(username)

    page.goto("/login")
    site.snap(page, "login")
    page.get_by_role("link", name=re.compile("forgot", re.IGNORECASE)).click()
    expect(page).to_have_url(site.url("/forgot-password"))
    site.snap(page, "forgot")
    page.locator("#email").fill(address)
    site.submit(page, "#email")
    _notice(page)
    site.snap(page, "forgot-done")

    link = site.inbox.link(address, "/reset-password")
    assert link.startswith(site.url("/reset-password?token="))
    token = parse_qs(urlsplit(link).query)["token"][0]
    page.goto(link)
    page.reload()  # opening the link again spends nothing
    expect(page.locator("input[name=token]")).to_have_value(token)
    site.snap(page, "reset")

    # A typo in the confirmation: refused, the form stays usable, no password echoed back.
    page.locator("#password").fill(NEW_PASSWORD)
    page.locator("#password_confirm").fill(NEW_PASSWORD + " typo")
    site.submit(page, "#password_confirm")
    expect(page.locator("[role=alert], .field-error").first).to_be_visible()
    expect(page.locator("#password")).to_have_value("")
    expect(page.locator("#password_confirm")).to_have_value("")
    site.snap(page, "reset-error")
    assert site.token(username, PASSWORD).status_code == 200

    page.locator("#password").fill(NEW_PASSWORD)
    page.locator("#password_confirm").fill(NEW_PASSWORD)
    site.submit(page, "#password_confirm")
    _notice(page)
    site.snap(page, "reset-done")
    assert site.token(username, PASSWORD).status_code == 401

    site.sign_in(page, address, NEW_PASSWORD)
    expect(page).to_have_url(site.url("/account"))


def test_a_reset_link_that_is_not_valid_says_so(site: Site, page: Page) -> None:
    page.goto("/reset-password?token=not-a-token-we-ever-sent")
    if page.locator("#password").count():  # the page may tell at once, or on sending the form
        page.locator("#password").fill(NEW_PASSWORD)
        page.locator("#password_confirm").fill(NEW_PASSWORD)
        site.submit(page, "#password_confirm")
    expect(page.get_by_role("alert")).to_be_visible()
    site.snap(page, "reset-invalid")


def test_a_wrong_password_is_refused_and_the_username_kept(site: Site, page: Page) -> None:
    username = site.new_username("cai")
    site.create_user(username)
    site.sign_in(page, username, "not the password at all")
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page).to_have_url(re.compile(re.escape(site.url("/login"))))
    expect(page.get_by_label("Username or email")).to_have_value(username)
    expect(page.locator("#password")).to_have_value("")
    assert SESSION_COOKIE not in _cookies(page.context)
    site.snap(page, "login-error")


def test_register_errors_are_tied_to_their_field(site: Site, page: Page) -> None:
    username = site.new_username("dan")
    page.goto("/register")
    page.locator("#username").fill(username)
    page.locator("#email").fill(f"{username}@example.com")
    page.locator("#password").fill("password")  # too common
    site.submit(page, "#email")
    password = page.locator("#password")
    expect(page.locator("#password-error")).to_be_visible()
    expect(password).to_have_attribute("aria-invalid", "true")
    expect(password).to_have_attribute("aria-describedby", re.compile(r"\bpassword-error\b"))
    expect(password).to_have_value("")
    expect(page.locator("#username")).to_have_value(username)
    expect(page.locator("#email")).to_have_value(f"{username}@example.com")
    site.snap(page, "register-error")


def test_account_form_errors_are_tied_to_their_field(site: Site, page: Page) -> None:
    username = site.new_username("eve")
    site.create_user(username)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    page.locator("#password-current_password").fill("not the current password")
    page.locator("#password-new_password").fill(NEW_PASSWORD)
    page.locator("#password-new_password_confirm").fill(NEW_PASSWORD)
    site.submit(page, "#password-new_password")
    current = page.locator("#password-current_password")
    expect(page.locator("#password-current_password-error")).to_be_visible()
    expect(current).to_have_attribute("aria-invalid", "true")
    expect(current).to_have_attribute(
        "aria-describedby", re.compile(r"\bpassword-current_password-error\b")
    )
    expect(current).to_have_value("")
    site.snap(page, "account-error")
    assert site.token(username, PASSWORD).status_code == 200


def test_page_forms_refuse_a_forged_missing_or_foreign_csrf_token(
    site: Site, new_context: NewContext
) -> None:
    username = site.new_username("fay")
    site.create_user(username)
    page = new_context().new_page()

    # Sign-in form with an altered token.
    page.goto("/login")
    page.locator("input[name=csrf_token]").evaluate("input => { input.value += 'x' }")
    page.get_by_label("Username or email").fill(username)
    page.locator("#password").fill(PASSWORD)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        site.submit(page, "#password")
    assert posted.value.status == 403
    expect(page.get_by_text(CSRF_REFUSED)).to_be_visible()
    assert SESSION_COOKIE not in _cookies(page.context)
    site.snap(page, "csrf-error")

    # Signed in: a form without the field changes nothing.
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    profile = page.locator("form").filter(has=page.locator("#profile-full_name"))
    profile.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    page.locator("#profile-full_name").fill("Changed Without Token")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        site.submit(page, "#profile-full_name")
    assert posted.value.status == 403
    expect(page.get_by_text(CSRF_REFUSED)).to_be_visible()

    # Nor does one with a token that is valid, but for another browser's session.
    other = new_context().new_page()
    site.sign_in(other, username, PASSWORD)
    expect(other).to_have_url(site.url("/account"))
    foreign = other.locator("input[name=csrf_token]").first.input_value()
    page.goto("/account")
    own = page.locator("input[name=csrf_token]").first.input_value()
    assert foreign != own
    profile.locator("input[name=csrf_token]").evaluate("(input, t) => { input.value = t }", foreign)
    page.locator("#profile-full_name").fill("Changed With A Foreign Token")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        site.submit(page, "#profile-full_name")
    assert posted.value.status == 403
    expect(page.get_by_text(CSRF_REFUSED)).to_be_visible()

    access = site.access_token(username, PASSWORD)
    assert site.get("/users/me", access).json()["full_name"] is None


def test_the_session_cookie_works_on_the_api_only_with_the_csrf_header(
    site: Site, page: Page
) -> None:
    username = site.new_username("gus")
    site.create_user(username)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    api = page.context.request  # carries the browser's cookies
    csrf = _cookies(page.context)[CSRF_COOKIE]["value"]

    assert api.get(site.url("/users/me")).json()["username"] == username  # safe: no header
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
        refused = api.patch(site.url("/users/me"), data={"full_name": "Gus"}, headers=headers)
        assert refused.status == 403, (headers, refused.text())
        assert refused.json() == {"detail": CSRF_REFUSED}
    refused = api.post(site.url("/logout"))
    assert refused.status == 403 and refused.json() == {"detail": CSRF_REFUSED}
    assert api.get(site.url("/users/me")).status == 200

    headers = {"X-CSRF-Token": csrf}
    changed = api.patch(site.url("/users/me"), data={"full_name": "Gus"}, headers=headers)
    assert changed.status == 200, changed.text()
    assert changed.json()["full_name"] == "Gus"
    assert api.post(site.url("/logout"), headers=headers).status == 204
    assert api.get(site.url("/users/me")).status == 401


@pytest.mark.parametrize(
    ("next_url", "lands_on"),
    [
        ("//evil.example", "/account"),
        ("https:evil.example", "/account"),
        ("/\\evil.example", "/account"),
        ("javascript:alert(1)", "/account"),
        ("https://evil.example/account", "/account"),
        ("/account?tab=x", "/account?tab=x"),
    ],
)
def test_next_after_sign_in_stays_on_the_same_origin(
    site: Site, page: Page, next_url: str, lands_on: str
) -> None:
    username = site.new_username("hal")
    site.create_user(username)
    site.sign_in(page, username, PASSWORD, next_url=next_url)
    expect(page).to_have_url(site.url(lands_on))


def test_next_survives_a_failed_attempt(site: Site, page: Page) -> None:
    username = site.new_username("kim")
    site.create_user(username)
    site.sign_in(page, username, "not the password at all", next_url="/account?tab=x")
    expect(page.get_by_role("alert")).to_be_visible()
    page.locator("#password").fill(PASSWORD)
    site.submit(page, "#password")
    expect(page).to_have_url(site.url("/account?tab=x"))


def test_keyboard_only_sign_in_with_a_visible_focus(site: Site, page: Page) -> None:
    username = site.new_username("ivy")
    site.create_user(username)
    page.goto("/login")
    # Once round the page with Tab (from wherever the page put the focus, back to the username
    # field): everything that takes the focus shows it.
    seen, hidden = [], []
    for _ in range(20):
        style = _focus(page)
        if style["tag"] != "BODY":  # BODY: the focus is outside the page, between two rounds
            seen.append(style["id"] or style["tag"])
            if not _focus_is_visible(style):
                hidden.append(style)
        if style["id"] == "username" and len(seen) > 1:
            break
        page.keyboard.press("Tab")
    assert _focus(page)["id"] == "username", f"Tab never came round to the username: {seen}"
    assert not hidden, f"focused without a visible indicator: {hidden}"

    page.keyboard.type(username)
    page.keyboard.press("Tab")
    style = _focus(page)
    assert style["id"] == "password" and _focus_is_visible(style), style
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(site.url("/account"))


def test_sign_in_sets_an_httponly_session_cookie_and_a_readable_csrf_cookie(
    site: Site, page: Page
) -> None:
    username = site.new_username("jo")
    site.create_user(username)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    cookies = _cookies(page.context)
    session = cookies[SESSION_COOKIE]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["path"] == "/"
    assert session["secure"] is False  # PUBLIC_URL is http here; https gets __Host- + Secure
    assert cookies[CSRF_COOKIE]["httpOnly"] is False
    readable = page.evaluate("document.cookie")
    assert f"{CSRF_COOKIE}=" in readable
    assert SESSION_COOKIE not in readable


def _totp(secret: str, steps_ahead: int = 0) -> str:
    """The code of a time step from now (the server accepts one step either side)."""
    return pyotp.TOTP(secret).at(time.time(), counter_offset=steps_ahead)


def _not_a_code(secret: str) -> str:
    """Six digits that no step near now has."""
    near = {_totp(secret, offset) for offset in range(-2, 3)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


def test_turn_on_two_factor_then_sign_in_with_a_code(site: Site, page: Page) -> None:
    username = site.new_username("mfa")
    site.create_user(username)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    section = page.get_by_role("region", name="Two-factor authentication")
    expect(section).to_contain_text("Two-factor authentication is off")
    site.snap_part(page, "section[aria-labelledby=mfa-heading]", "account-mfa-off")

    # Set-up: the password, then the QR code and the key to type by hand.
    page.locator("#mfa_setup-password").fill(PASSWORD)
    site.submit(page, "#mfa_setup-password")
    qr = page.locator(".qr svg")
    expect(qr).to_be_visible()
    expect(qr).to_have_accessible_name("QR code for an authenticator app")
    secret = page.locator(".secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    site.snap(page, "account-mfa-setup")
    # On a phone the QR code shrinks with the card, white behind it in dark mode too.
    page.set_viewport_size({"width": 320, "height": 640})
    box, frame = qr.bounding_box(), page.locator(".qr").bounding_box()
    assert box and frame and 100 < box["width"] <= frame["width"] <= 320, (box, frame)
    page.emulate_media(color_scheme="dark")
    background = page.locator(".qr").evaluate("el => getComputedStyle(el).backgroundColor")
    assert background == "rgb(255, 255, 255)", background
    site.snap(page, "account-mfa-setup-dark")
    page.emulate_media(color_scheme="light")

    # A mistyped first code: the error by the field; the key is never shown again.
    page.get_by_label("6-digit code").fill(_not_a_code(secret))
    site.submit(page, "#code")
    expect(page.locator("#code-error")).to_have_text("Invalid MFA code")
    expect(page.locator("#code")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".secret")).to_have_count(0)
    expect(page.locator(".qr svg")).to_have_count(0)
    expect(page.get_by_role("link", name="start again")).to_be_visible()
    site.snap(page, "account-mfa-setup-error")
    page.get_by_label("6-digit code").fill(_totp(secret))
    site.submit(page, "#code")
    codes = page.locator(".recovery-codes li")
    expect(codes).to_have_count(10)
    _notice(page)
    site.snap(page, "account-mfa-recovery-codes")
    page.get_by_role("link", name=re.compile("back to my account", re.IGNORECASE)).click()
    expect(page).to_have_url(site.url("/account"))
    expect(section).to_contain_text("Two-factor authentication is on")
    site.snap_part(page, "section[aria-labelledby=mfa-heading]", "account-mfa-on")

    # Sign out, and in again: the password, then a code.
    page.locator("form[action$='/logout']").get_by_role("button", name="Sign out").click()
    expect(page.locator("form[action$='/logout']")).to_have_count(0)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/login/mfa"))
    challenge = _cookies(page.context)[MFA_COOKIE]
    assert challenge["httpOnly"] is True and challenge["sameSite"] == "Lax"
    assert MFA_COOKIE not in page.evaluate("document.cookie")
    assert challenge["value"] not in page.content()
    assert SESSION_COOKIE not in _cookies(page.context)
    code = page.get_by_label("6-digit code")
    expect(code).to_be_focused()
    expect(code).to_have_attribute("autocomplete", "one-time-code")
    expect(code).to_have_attribute("inputmode", "numeric")
    site.snap(page, "login-mfa")
    page.get_by_role("link", name=re.compile("recovery code", re.IGNORECASE)).click()
    expect(page.get_by_label("Recovery code")).to_be_visible()
    site.snap(page, "login-mfa-recovery")
    page.get_by_role("link", name=re.compile("authenticator app", re.IGNORECASE)).click()
    page.get_by_label("6-digit code").fill(_not_a_code(secret))
    page.keyboard.press("Enter")
    expect(page.locator("#code-error")).to_have_text("Invalid MFA code")
    site.snap(page, "login-mfa-error")
    assert SESSION_COOKIE not in _cookies(page.context)
    # The confirming code's step is spent: the next step's code signs in.
    page.get_by_label("6-digit code").fill(_totp(secret, 1))
    page.keyboard.press("Enter")
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#profile-username")).to_have_value(username)
    cookies = _cookies(page.context)
    assert MFA_COOKIE not in cookies and cookies[SESSION_COOKIE]["httpOnly"] is True
