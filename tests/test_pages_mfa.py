"""Two-factor authentication on the hosted pages, over HTTP: set-up on /account, the second
step of a page sign-in (``/login/mfa``), new recovery codes, turning it off.

Every test runs on SQLite and PostgreSQL. TOTP codes come from a clock the test moves: each
code is computed for a new 30-second step (a code is accepted once), with
``pyotp.TOTP(secret).at(clock.now)``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from sqlalchemy import update

from authdb.db.models import User
from tests import test_pages
from tests.conftest import PASSWORD
from tests.test_pages import (
    WRONG,
    Browser,
    MakeSite,
    Site,
    assert_csrf_refused_page,
    assert_page_headers,
    csrf_field,
    post_form,
    set_cookies,
)

# The page tests' fixtures: a started service app, and browsers on it.
make_site = test_pages.make_site
site = test_pages.site

MFA_COOKIE = "authdb_mfa"
INVALID_CODE = "Invalid MFA code"
EXPIRED = "Your sign-in expired; please sign in again."
_SECRET = re.compile(r'<p class="secret"><code>([A-Z2-7 ]+)</code></p>')
_RECOVERY_CODE = re.compile(r"<li><code>([0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4})</code></li>")


class Clock:
    """``core.clock`` for a test: a fixed time that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def code(self, secret: str) -> str:
        """The code of the next time step (the clock moves there): each is new."""
        self.now += timedelta(seconds=30)
        return pyotp.TOTP(secret).at(self.now)


@pytest.fixture
def clock(site: Site) -> Clock:
    moving = Clock()
    site.auth.core.clock = moving
    return moving


def secret_of(html: str) -> str:
    found = _SECRET.search(html)
    assert found, html[:3000]
    return found.group(1).replace(" ", "")


def recovery_codes_of(html: str) -> list[str]:
    codes = _RECOVERY_CODE.findall(html)
    assert len(codes) == 10, html[:3000]
    return codes


def wrong_code(secret: str, now: datetime) -> str:
    """A well-formed code that no step in the window around ``now`` has."""
    totp = pyotp.TOTP(secret)
    window = {totp.at(now, counter_offset=offset) for offset in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in window)


def input_tag(html: str, field_id: str) -> str:
    found = re.search(rf'<input id="{field_id}"[^>]*>', html)
    assert found, html[:3000]
    return found.group(0)


async def start_setup(browser: Browser) -> httpx.Response:
    started = await browser.submit("/account", {"password": PASSWORD}, action="/account/mfa/setup")
    assert started.status_code == 200, started.text[:2000]
    return started


async def enable_mfa(browser: Browser, clock: Clock) -> tuple[str, list[str]]:
    """Turn MFA on through /account; returns the secret read from the page and the codes."""
    started = await start_setup(browser)
    secret = secret_of(started.text)
    confirmed = await browser.client.post(
        "/account/mfa/confirm",
        data={"csrf_token": csrf_field(started.text), "code": clock.code(secret)},
    )
    assert confirmed.status_code == 200, confirmed.text[:2000]
    return secret, recovery_codes_of(confirmed.text)


async def password_step(browser: Browser, next_: str = "") -> httpx.Response:
    """The password step of a page sign-in for an account with MFA on."""
    response = await browser.sign_in("alice", PASSWORD, next_)
    assert response.status_code == 303, response.text[:2000]
    assert urlsplit(response.headers["location"]).path == "/login/mfa"
    assert browser.session_cookie is None
    return response


async def code_step(
    browser: Browser, data: dict[str, str], page: str = "/login/mfa"
) -> httpx.Response:
    """GET the code page (``page``), then post its form with ``data``."""
    return await browser.submit(page, data, action="/login/mfa")


async def mfa_user(site: Site, clock: Clock) -> tuple[str, list[str]]:
    """alice, with MFA turned on through the pages (in a browser of her own)."""
    await site.create_user()
    return await enable_mfa(await (await site.browser()).signed_in(), clock)


# -- set-up on /account -------------------------------------------------------------------


async def test_setting_up_mfa_on_the_account_page(site: Site, clock: Clock) -> None:
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    account = await alice.client.get("/account")
    assert "Two-factor authentication is off" in account.text
    assert 'action="/account/mfa/setup"' in account.text

    started = await start_setup(alice)
    assert_page_headers(started)
    assert "<script" not in started.text.lower()
    svg = re.search(r"<svg [^>]*>", started.text)
    assert svg and 'viewBox="0 0 ' in svg.group(0) and 'role="img"' in svg.group(0)
    assert "<title>QR code for an authenticator app</title>" in started.text
    secret = secret_of(started.text)
    assert len(secret) == 32
    assert re.search(r'<p class="secret"><code>([A-Z2-7]{4} ){7}[A-Z2-7]{4}</code>', started.text)
    assert f'href="otpauth://totp/authdb:alice?secret={secret}&amp;issuer=authdb"' in started.text
    field = input_tag(started.text, "code")
    assert 'autocomplete="one-time-code"' in field and 'inputmode="numeric"' in field
    assert "autofocus" not in field  # that would scroll the QR code away on a phone

    # A mistyped first code: the error next to the field, and never the key again (a stolen
    # session cookie must not read it); the page offers to start again with the password.
    token = csrf_field(started.text)
    mistyped = await alice.client.post(
        "/account/mfa/confirm", data={"csrf_token": token, "code": wrong_code(secret, clock.now)}
    )
    assert mistyped.status_code == 400
    assert 'id="code-error"' in mistyped.text and INVALID_CODE in mistyped.text
    assert 'aria-invalid="true" aria-describedby="code-error"' in mistyped.text
    assert secret not in mistyped.text and "<svg " not in mistyped.text
    assert _SECRET.search(mistyped.text) is None and "otpauth://" not in mistyped.text
    assert "start again" in mistyped.text
    assert ("mfa_failed", 1) in await site.events()  # a wrong first code counts too
    empty = await alice.client.post("/account/mfa/confirm", data={"csrf_token": token, "code": ""})
    assert empty.status_code == 422 and 'id="code-error"' in empty.text
    assert secret not in empty.text

    confirmed = await alice.client.post(
        "/account/mfa/confirm", data={"csrf_token": token, "code": clock.code(secret)}
    )
    assert confirmed.status_code == 200
    assert_page_headers(confirmed)
    assert "Two-factor authentication is on." in confirmed.text
    assert "shown only this once" in confirmed.text
    codes = recovery_codes_of(confirmed.text)
    assert len(set(codes)) == 10
    assert 'href="/account"' in confirmed.text
    (notice,) = await test_pages._mail_to(site, "alice@example.com")
    assert "now on" in str(notice["Subject"])
    account = await alice.client.get("/account")
    assert "Two-factor authentication is on" in account.text
    assert 'action="/account/mfa/setup"' not in account.text
    assert secret not in account.text
    # The set-up cannot be confirmed again, nor started while MFA is on: said in the section.
    again = await alice.client.post(
        "/account/mfa/confirm", data={"csrf_token": token, "code": clock.code(secret)}
    )
    assert again.status_code == 409 and "No MFA setup in progress" in again.text
    restart = await alice.submit("/account", {"password": PASSWORD}, action="/account/mfa/setup")
    assert restart.status_code == 409 and "MFA already enabled" in restart.text
    assert ("mfa_enabled", 1) in await site.events()


async def test_set_up_refusals_show_in_the_section(make_site: MakeSite) -> None:
    site = await make_site(login_max_failures=2)
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    empty = await alice.submit("/account", {"password": ""}, action="/account/mfa/setup")
    assert empty.status_code == 422 and 'id="mfa_setup-password-error"' in empty.text
    wrong = await alice.submit("/account", {"password": WRONG}, action="/account/mfa/setup")
    assert wrong.status_code == 400
    assert_page_headers(wrong)
    assert 'id="mfa_setup-password-error"' in wrong.text and "Incorrect password" in wrong.text
    assert 'id="mfa_setup-password" name="password" type="password"' in wrong.text
    assert "autofocus" in input_tag(wrong.text, "mfa_setup-password")
    assert ("password_failed", 1) in await site.events()
    locked = await alice.submit("/account", {"password": WRONG}, action="/account/mfa/setup")
    locked = await alice.submit("/account", {"password": PASSWORD}, action="/account/mfa/setup")
    assert locked.status_code == 429 and "Too many attempts" in locked.text
    assert int(locked.headers["retry-after"]) > 0
    # While the account is locked, no first code is even looked at.
    token = await alice.token_for("/account")
    nothing = await alice.client.post(
        "/account/mfa/confirm", data={"csrf_token": token, "code": "1"}
    )
    assert nothing.status_code == 429 and "Too many attempts" in nothing.text


# -- the second step of a page sign-in ----------------------------------------------------


async def test_sign_in_asks_for_the_code_and_the_right_code_opens_a_session(
    site: Site, clock: Clock
) -> None:
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    asked = await password_step(browser)
    assert asked.headers["location"] == "/login/mfa"
    cookie = set_cookies(asked)[MFA_COOKIE]
    mfa_token = cookie.value
    assert len(mfa_token) >= 43
    assert "httponly" in cookie.attributes
    assert cookie.attributes["samesite"].lower() == "lax"
    assert cookie.attributes["path"] == "/"
    assert int(cookie.attributes["max-age"]) == 300
    assert "secure" not in cookie.attributes and "domain" not in cookie.attributes
    assert "authdb_session" not in set_cookies(asked)
    assert mfa_token not in asked.text

    page = await browser.client.get("/login/mfa")
    assert page.status_code == 200
    assert_page_headers(page)
    assert mfa_token not in page.text
    field = input_tag(page.text, "code")
    assert 'name="code"' in field and 'autocomplete="one-time-code"' in field
    assert 'inputmode="numeric"' in field
    assert '<label for="code">6-digit code</label>' in page.text
    assert 'href="/login/mfa?method=recovery"' in page.text
    assert "<script" not in page.text.lower()

    done = await code_step(browser, {"code": clock.code(secret)})
    assert done.status_code == 303
    assert done.headers["location"] == "/account"
    cookies = set_cookies(done)
    assert "httponly" in cookies["authdb_session"].attributes
    assert int(cookies["authdb_session"].attributes["max-age"]) == 14 * 24 * 3600
    assert int(cookies[MFA_COOKIE].attributes["max-age"]) == 0  # cleared
    assert browser.client.cookies.get(MFA_COOKIE) is None
    assert mfa_token not in done.headers["location"]
    account = await browser.client.get("/account")
    assert account.status_code == 200 and "Signed in as <strong>alice</strong>" in account.text
    # The new session's CSRF token is bound to it: its forms work.
    assert csrf_field(account.text) == browser.csrf_cookie
    profile = await browser.submit(
        "/account", {"username": "alice", "full_name": "Alice"}, action="/account/profile"
    )
    assert profile.status_code == 303
    me = await browser.client.get("/users/me")
    assert me.json()["full_name"] == "Alice" and me.json()["mfa_enabled"] is True
    assert ("login_mfa_required", 1) in await site.events()
    # The challenge is spent: its cookie, replayed, signs nobody in.
    replay = await site.browser()
    replay.client.cookies.set(MFA_COOKIE, mfa_token, domain="auth.example.test")
    again = await code_step(replay, {"code": clock.code(secret)})
    assert again.status_code == 303 and again.headers["location"] == "/login?notice=mfa_expired"
    assert replay.session_cookie is None


async def test_a_wrong_code_is_shown_next_to_the_field_and_counts_as_a_failed_login(
    site: Site, clock: Clock
) -> None:
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    await password_step(browser)
    right = clock.code(secret)
    wrong = await code_step(browser, {"code": wrong_code(secret, clock.now)})
    assert wrong.status_code == 401
    assert_page_headers(wrong)
    assert 'id="code-error"' in wrong.text and INVALID_CODE in wrong.text
    assert 'aria-invalid="true" aria-describedby="code-error"' in wrong.text
    assert wrong_code(secret, clock.now) not in wrong.text  # codes are never refilled
    assert browser.session_cookie is None
    assert ("mfa_failed", 1) in await site.events()
    # Not a number at all, and nothing: refused the same way, or as missing.
    letters = await code_step(browser, {"code": "abcdef"})
    assert letters.status_code == 401 and INVALID_CODE in letters.text
    missing = await code_step(browser, {"code": ""})
    assert missing.status_code == 422 and "This field is required." in missing.text
    too_long = await code_step(browser, {"code": "1" * 65})
    assert too_long.status_code == 422 and "This is too long." in too_long.text
    # The right code still works: two wrong ones do not end the sign-in.
    done = await code_step(browser, {"code": right})
    assert done.status_code == 303 and done.headers["location"] == "/account"
    events = [event for event, _ in await site.events()]
    assert events.count("mfa_failed") == 2
    assert events[-1] == "login_ok"


async def test_five_wrong_codes_end_the_sign_in(site: Site, clock: Clock) -> None:
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    await password_step(browser, "/account?tab=x")
    right = clock.code(secret)
    for _ in range(5):
        wrong = await code_step(
            browser, {"code": wrong_code(secret, clock.now)}, "/login/mfa?next=/account"
        )
        assert wrong.status_code == 401
    dead = await code_step(browser, {"code": right, "next": "/account?tab=x"})
    assert dead.status_code == 303
    location = urlsplit(dead.headers["location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"notice": ["mfa_expired"], "next": ["/account?tab=x"]}
    assert int(set_cookies(dead)[MFA_COOKIE].attributes["max-age"]) == 0
    assert browser.session_cookie is None
    login = await browser.client.get(dead.headers["location"])
    assert EXPIRED in login.text
    assert 'name="next" value="/account?tab=x"' in login.text
    # Without the cookie, the code page sends the browser back to sign in.
    back = await browser.client.get("/login/mfa")
    assert back.status_code == 303 and back.headers["location"] == "/login"
    # A new sign-in starts a new challenge.
    await password_step(browser)
    done = await code_step(browser, {"code": right})
    assert done.status_code == 303 and done.headers["location"] == "/account"


async def test_a_recovery_code_signs_in_once(site: Site, clock: Clock) -> None:
    _secret, codes = await mfa_user(site, clock)
    browser = await site.browser()
    await password_step(browser)
    page = await browser.client.get("/login/mfa?method=recovery")
    assert page.status_code == 200
    assert '<label for="recovery_code">Recovery code</label>' in page.text
    assert 'name="code"' not in page.text
    assert 'href="/login/mfa"' in page.text  # back to the app's code
    done = await code_step(
        browser, {"recovery_code": codes[0].upper()}, "/login/mfa?method=recovery"
    )
    assert done.status_code == 303 and done.headers["location"] == "/account"
    assert browser.session_cookie
    assert ("mfa_recovery_code_used", 1) in await site.events()

    other = await site.browser()
    await password_step(other)
    used = await code_step(other, {"recovery_code": codes[0]}, "/login/mfa?method=recovery")
    assert used.status_code == 401
    assert 'id="recovery_code-error"' in used.text and INVALID_CODE in used.text
    assert codes[0] not in used.text
    assert other.session_cookie is None
    works = await code_step(other, {"recovery_code": codes[1]}, "/login/mfa?method=recovery")
    assert works.status_code == 303 and other.session_cookie


@pytest.mark.parametrize(
    ("next_", "carried", "lands_on"),
    [
        ("/account?tab=x", "/account?tab=x", "/account?tab=x"),
        ("//evil.example", None, "/account"),
        ("https://evil.example/account", None, "/account"),
        ("/\\evil.example", None, "/account"),
    ],
)
async def test_next_is_carried_to_the_code_step_and_checked_again(
    site: Site, clock: Clock, next_: str, carried: str | None, lands_on: str
) -> None:
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    asked = await password_step(browser, next_)
    location = urlsplit(asked.headers["location"])
    assert parse_qs(location.query).get("next") == ([carried] if carried else None)
    page = await browser.client.get(asked.headers["location"])
    assert f'name="next" value="{carried or ""}"' in page.text.replace("&amp;", "&")
    # Whatever the form says (a page can be edited), the landing is checked again.
    done = await browser.client.post(
        "/login/mfa",
        data={"csrf_token": csrf_field(page.text), "code": clock.code(secret), "next": next_},
    )
    assert done.status_code == 303 and done.headers["location"] == lands_on


async def test_the_code_form_needs_its_csrf_token_and_the_cookie(site: Site, clock: Clock) -> None:
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    await password_step(browser)
    code = clock.code(secret)
    refused = await browser.client.post("/login/mfa", data={"code": code})
    assert_csrf_refused_page(refused)
    forged = await browser.client.post("/login/mfa", data={"code": code, "csrf_token": "x.y"})
    assert_csrf_refused_page(forged)
    assert browser.session_cookie is None
    # The refusals spent nothing: the same code then works.
    done = await code_step(browser, {"code": code})
    assert done.status_code == 303 and browser.session_cookie
    # A browser that never gave the password: sent to sign in.
    stranger = await site.browser()
    assert (await stranger.client.get("/login/mfa?next=/account")).headers[
        "location"
    ] == "/login?next=%2Faccount"
    token = await stranger.token_for("/login")
    lost = await stranger.client.post("/login/mfa", data={"csrf_token": token, "code": code})
    assert lost.status_code == 303 and lost.headers["location"] == "/login?notice=mfa_expired"
    # A made-up cookie is no challenge.
    stranger.client.cookies.set(MFA_COOKIE, "made-up", domain="auth.example.test")
    made_up = await code_step(stranger, {"code": clock.code(secret)})
    assert made_up.headers["location"] == "/login?notice=mfa_expired"


async def test_a_disabled_account_is_refused_at_the_code_step(site: Site, clock: Clock) -> None:
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    await password_step(browser)
    async with site.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.username == "alice").values(disabled=True))
    refused = await code_step(browser, {"code": clock.code(secret)})
    assert refused.status_code == 400
    assert "This account is disabled." in refused.text
    assert 'action="/login"' in refused.text  # the sign-in form, as /login shows it
    assert browser.session_cookie is None
    assert int(set_cookies(refused)[MFA_COOKIE].attributes["max-age"]) == 0


async def test_a_locked_account_gets_the_wait_at_the_code_step(make_site: MakeSite) -> None:
    site = await make_site(login_max_failures=3)
    clock = Clock()
    site.auth.core.clock = clock
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    await password_step(browser)
    right = clock.code(secret)
    statuses = [
        (await code_step(browser, {"code": wrong_code(secret, clock.now)})).status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 401]
    locked = await code_step(browser, {"code": right})
    assert locked.status_code == 429
    assert_page_headers(locked)
    assert "Too many attempts" in locked.text
    assert int(locked.headers["retry-after"]) > 0
    assert browser.session_cookie is None
    assert ("lockout", 1) in await site.events()


async def test_on_https_the_mfa_cookie_is_host_prefixed_and_secure(make_site: MakeSite) -> None:
    public = "https://auth.example.test"
    site = await make_site(public_url=public)
    clock = Clock()
    site.auth.core.clock = clock
    await site.create_user()
    secret, _codes = await enable_mfa(await (await site.browser(public)).signed_in(), clock)
    browser = await site.browser(public)
    asked = await password_step(browser)
    cookies = set_cookies(asked)
    assert MFA_COOKIE not in cookies
    cookie = cookies[f"__Host-{MFA_COOKIE}"]
    assert {"secure", "httponly"} <= set(cookie.attributes)
    assert cookie.attributes["path"] == "/" and "domain" not in cookie.attributes
    done = await code_step(browser, {"code": clock.code(secret)})
    assert done.status_code == 303 and browser.client.cookies.get("__Host-authdb_session")


# -- with MFA on: new recovery codes, turning it off --------------------------------------


async def test_new_recovery_codes_from_the_account_page(site: Site, clock: Clock) -> None:
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    _secret, old = await enable_mfa(alice, clock)
    account = await alice.client.get("/account")
    assert 'action="/account/mfa/recovery-codes"' in account.text
    wrong = await alice.submit(
        "/account", {"password": WRONG}, action="/account/mfa/recovery-codes"
    )
    assert wrong.status_code == 400
    assert 'id="mfa_codes-password-error"' in wrong.text and "Incorrect password" in wrong.text
    fresh = await alice.submit(
        "/account", {"password": PASSWORD}, action="/account/mfa/recovery-codes"
    )
    assert fresh.status_code == 200
    assert "Your earlier codes no longer work" in fresh.text
    new = recovery_codes_of(fresh.text)
    assert not set(new) & set(old)
    assert ("mfa_recovery_codes_replaced", 1) in await site.events()

    browser = await site.browser()
    await password_step(browser)
    stale = await code_step(browser, {"recovery_code": old[0]}, "/login/mfa?method=recovery")
    assert stale.status_code == 401
    done = await code_step(browser, {"recovery_code": new[0]}, "/login/mfa?method=recovery")
    assert done.status_code == 303 and browser.session_cookie


async def test_turning_mfa_off_from_the_account_page(site: Site, clock: Clock) -> None:
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    secret, codes = await enable_mfa(alice, clock)
    await test_pages._mail_to(site, "alice@example.com")
    form = {"password": PASSWORD, "code": clock.code(secret)}

    missing = await alice.submit(
        "/account", {"password": "", "code": ""}, action="/account/mfa/disable"
    )
    assert missing.status_code == 422
    assert 'id="mfa_disable-password-error"' in missing.text
    assert 'id="mfa_disable-code-error"' in missing.text
    wrong_password = await alice.submit(
        "/account", {**form, "password": WRONG}, action="/account/mfa/disable"
    )
    assert wrong_password.status_code == 400
    assert 'id="mfa_disable-password-error"' in wrong_password.text
    wrong = await alice.submit(
        "/account", {**form, "code": wrong_code(secret, clock.now)}, action="/account/mfa/disable"
    )
    assert wrong.status_code == 400
    assert 'id="mfa_disable-code-error"' in wrong.text and INVALID_CODE in wrong.text
    assert 'aria-describedby="mfa_disable-code-error"' in wrong.text
    assert "autofocus" in input_tag(wrong.text, "mfa_disable-code")
    assert ("mfa_failed", 1) in await site.events()
    assert "Two-factor authentication is on" in wrong.text

    off = await alice.submit("/account", form, action="/account/mfa/disable")
    assert off.status_code == 303
    assert off.headers["location"] == "/account?notice=mfa_disabled"
    landing = await alice.client.get(off.headers["location"])
    assert "Two-factor authentication is off." in landing.text
    assert 'action="/account/mfa/setup"' in landing.text
    mails = await test_pages._mail_to(site, "alice@example.com", 2)
    assert "now off" in str(mails[-1]["Subject"])
    # Signing in needs the password alone again; the old codes mean nothing.
    browser = await site.browser()
    signed = await browser.sign_in()
    assert signed.status_code == 303 and signed.headers["location"] == "/account"
    assert MFA_COOKIE not in set_cookies(signed)
    again = await alice.submit(
        "/account", {"password": PASSWORD, "code": codes[0]}, action="/account/mfa/disable"
    )
    assert again.status_code == 409 and "MFA not enabled" in again.text


async def test_a_recovery_code_also_turns_mfa_off(site: Site, clock: Clock) -> None:
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    _secret, codes = await enable_mfa(alice, clock)
    off = await alice.submit(
        "/account", {"password": PASSWORD, "code": codes[3]}, action="/account/mfa/disable"
    )
    assert off.status_code == 303
    me = await alice.client.get("/users/me")
    assert me.json()["mfa_enabled"] is False


async def test_the_account_mfa_forms_need_their_csrf_token(site: Site, clock: Clock) -> None:
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    forms = {
        "/account/mfa/setup": {"password": PASSWORD},
        "/account/mfa/confirm": {"code": "123456"},
        "/account/mfa/recovery-codes": {"password": PASSWORD},
        "/account/mfa/disable": {"password": PASSWORD, "code": "123456"},
    }

    async def refused_everywhere() -> None:
        for path, data in forms.items():
            for attempt in ({}, {"csrf_token": ""}, {"csrf_token": "not-a-token"}):
                assert_csrf_refused_page(await post_form(alice.client, path, {**data, **attempt}))

    await refused_everywhere()
    events = [event for event, _ in await site.events()]
    assert "mfa_setup_started" not in events
    _secret, codes = await enable_mfa(alice, clock)
    forms["/account/mfa/disable"]["code"] = codes[0]
    await refused_everywhere()
    me = await alice.client.get("/users/me")
    assert me.json()["mfa_enabled"] is True
    events = [event for event, _ in await site.events()]
    assert "mfa_recovery_codes_replaced" not in events and "mfa_disabled" not in events


async def test_the_code_page_can_be_overridden_on_its_own(
    make_site: MakeSite, tmp_path: Path
) -> None:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "login_mfa.html").write_text(
        "<!doctype html><title>Code · {{ site_name }}</title><p>OVERRIDDEN CODE PAGE</p>"
        '<form method="post" action="{{ paths.login_mfa }}">'
        '<input type="hidden" name="csrf_token" value="{{ csrf_token }}">'
        '<input type="hidden" name="next" value="{{ next }}">'
        '<input name="code" autocomplete="one-time-code"></form>'
    )
    site = await make_site(templates_dir=str(tmp_path))
    clock = Clock()
    site.auth.core.clock = clock
    secret, _codes = await mfa_user(site, clock)
    browser = await site.browser()
    await password_step(browser)
    page = await browser.client.get("/login/mfa")
    assert "OVERRIDDEN CODE PAGE" in page.text
    login = await browser.client.get("/login")
    assert "OVERRIDDEN" not in login.text
    done = await code_step(browser, {"code": clock.code(secret)})
    assert done.status_code == 303 and done.headers["location"] == "/account"
