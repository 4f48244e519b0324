"""Passkeys in a real browser: Chromium's virtual authenticator, the real `authdb serve`, both
databases.

The server runs with ``AUTHDB_PUBLIC_URL=http://localhost:PORT`` (browsers refuse an IP address as
the relying party id) and the browser opens the pages at that address; one test runs a server
with an IP-address ``PUBLIC_URL`` instead. The authenticator is Chromium's own virtual one, driven
through the DevTools protocol (``WebAuthn.*``): it really creates and signs with the keys, and the
server really verifies them.

Two things about Chromium's virtual authenticator shape these tests:

- It completes a conditional-mediation request (the username field's passkey autofill) as soon as
  the page asks, without waiting for a focus or a pick. So, except in the test of conditional UI
  itself, an init script holds conditional requests open (until the page aborts them, as a real
  browser would while the person has not picked anything), and rejects a second request while one
  is held, with the same ``OperationError`` Chromium gives.
- It refuses a discoverable-credential request (empty ``allowCredentials``, which is what authdb
  always sends) when the authenticator cannot verify the user. The test of a passkey without user
  verification therefore names the credential in the browser's request; what the server receives
  is then an assertion without the UV flag, which is what that test is about.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, CDPSession, Locator, Page, expect

from authdb.http.pages.signin_passkey import PASSKEY_FAILED
from tests.conftest import PASSWORD

if TYPE_CHECKING:
    from tests.browser import Site

# The fixtures (and their helpers, reached through ``site``) live in tests/browser.py.
pytest_plugins = ["tests.browser"]

SESSION_COOKIE = "authdb_session"
CSRF_COOKIE = "authdb_csrf"
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
NEEDS_A_NAME = (
    "Passkeys need a domain name in AUTHDB_PUBLIC_URL (use http://localhost:PORT for development)"
)
# A passkey (ES256 key, discoverable) on this machine's "platform authenticator".
VERIFYING = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}
# One that can tell a person is there but cannot verify who (no PIN, no biometrics).
NOT_VERIFYING = {**VERIFYING, "hasUserVerification": False, "isUserVerified": False}
CREDENTIAL_FIELDS = ("credentialId", "isResidentCredential", "rpId", "privateKey", "userHandle")

NewContext = Callable[[], BrowserContext]


@pytest.fixture(scope="module")
def site_host(request: pytest.FixtureRequest) -> str:
    """``site`` runs at http://localhost:PORT here (overrides tests/browser.py's 127.0.0.1)."""
    return str(getattr(request, "param", "localhost"))


# --- the browser side -------------------------------------------------------------------------

# Wraps navigator.credentials.get (before any page script runs) to report each call, and, with
# ``hold``, to keep conditional requests open until aborted (see the module docstring). The
# outcome of the browser's last get/create shows on <html> as data-get/data-create.
_WATCH = """(() => {
  const config = %s;
  const report = entry => { if (window.__passkeyCall) window.__passkeyCall(entry); };
  const container = navigator.credentials;
  if (!container) return;  // not a secure context (about:blank)
  const get = container.get.bind(container);
  let held = false;
  // The outcome of the last request of each kind ("ok" or the error's name), on <html>.
  const mark = (kind, promise) => {
    const root = document.documentElement;
    delete root.dataset[kind];
    promise.then(() => { root.dataset[kind] = "ok"; }, e => { root.dataset[kind] = e.name; });
    return promise;
  };
  container.get = function (options) {
    const mediation = (options && options.mediation) || "optional";
    report({call: "get", mediation: mediation});
    if (config.hold && mediation === "conditional") {
      return new Promise((resolve, reject) => {
        const signal = options.signal;
        held = true;
        const abort = () => {
          held = false;
          reject(signal.reason || new DOMException("The operation was aborted.", "AbortError"));
        };
        if (signal && signal.aborted) abort();
        else if (signal) signal.addEventListener("abort", abort, {once: true});
      });
    }
    if (held) {
      return Promise.reject(new DOMException("A request is already pending.", "OperationError"));
    }
    if (config.allow && options && options.publicKey) {
      const id = value => Uint8Array.from(atob(value), c => c.charCodeAt(0));
      const allowCredentials = config.allow.map(value => ({type: "public-key", id: id(value)}));
      options = {...options, publicKey: {...options.publicKey, allowCredentials}};
    }
    return mark("get", get(options));
  };
  const create = container.create.bind(container);
  container.create = options => mark("create", create(options));
  const credential = window.PublicKeyCredential;
  const available = credential && credential.isConditionalMediationAvailable;
  if (available) {
    PublicKeyCredential.isConditionalMediationAvailable = function () {
      const answer = available.call(PublicKeyCredential);
      answer.then(value => report({call: "isConditionalMediationAvailable", answer: value}));
      return answer;
    };
  }
})();"""


def _browser(
    new_context: NewContext, *, hold: bool = True, allow: list[str] | None = None
) -> tuple[Page, list[dict[str, Any]]]:
    """A page in a fresh context, and the list its WebAuthn calls are reported to.

    ``allow``: credential ids (standard base64, as the DevTools protocol gives them) to name in
    every non-conditional request.
    """
    context = new_context()
    calls: list[dict[str, Any]] = []

    def report(entry: dict[str, Any]) -> None:
        calls.append(entry)

    context.expose_function("__passkeyCall", report)
    context.add_init_script(script=_WATCH % json.dumps({"hold": hold, "allow": allow}))
    return context.new_page(), calls


@dataclass
class Authenticator:
    """A virtual authenticator attached to one page (it stays across the page's navigations)."""

    cdp: CDPSession
    id: str

    @classmethod
    def attach(cls, page: Page, options: dict[str, Any] | None = None) -> Authenticator:
        cdp = page.context.new_cdp_session(page)
        cdp.send("WebAuthn.enable", {"enableUI": False})
        added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options or VERIFYING})
        return cls(cdp=cdp, id=str(added["authenticatorId"]))

    def credentials(self) -> list[dict[str, Any]]:
        found = self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.id})
        return list(found["credentials"])

    def add(self, credential: dict[str, Any]) -> None:
        """Put a copy of another authenticator's credential (the same key) into this one."""
        copy = {name: credential[name] for name in CREDENTIAL_FIELDS}
        copy["signCount"] = credential["signCount"]
        self.cdp.send("WebAuthn.addCredential", {"authenticatorId": self.id, "credential": copy})

    def set_user_verified(self, verified: bool) -> None:
        self.cdp.send(
            "WebAuthn.setUserVerified", {"authenticatorId": self.id, "isUserVerified": verified}
        )

    def remove(self) -> None:
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.id})


# --- steps ------------------------------------------------------------------------------------


def _cookies(page: Page) -> dict[str, Any]:
    return {cookie["name"]: cookie for cookie in page.context.cookies()}


def _section(page: Page) -> Locator:
    """The /account section about passkeys."""
    return page.locator("section").filter(has=page.locator("#passkeys-heading"))


def _add_passkey(site: Site, page: Page, name: str | None) -> None:
    """On /account (signed in): name it (or not), "Add a passkey"; the page reloads saying so."""
    page.goto("/account")
    if name is not None:
        page.locator("#passkey-name").fill(name)
    page.locator("#passkey-password").fill(PASSWORD)
    page.locator("#passkey-add").click()
    expect(page).to_have_url(site.url("/account?notice=passkey_added"))
    expect(page.get_by_text("Your passkey has been added.")).to_be_visible()


def _sign_out(page: Page) -> None:
    form = page.locator("form[action$='/logout']")
    form.get_by_role("button", name="Sign out").click()
    expect(form).to_have_count(0)
    assert SESSION_COOKIE not in _cookies(page)


def _signed_in_with_a_passkey(
    site: Site, new_context: NewContext
) -> tuple[str, Page, Authenticator]:
    """A new user signed in with the password on /account, with one passkey named "Laptop"."""
    username = site.new_username("pk")
    site.create_user(username)
    page, _ = _browser(new_context)
    authenticator = Authenticator.attach(page)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    _add_passkey(site, page, "Laptop")
    return username, page, authenticator


def _passkey_button(page: Page, next_url: str | None = None) -> Locator:
    """/login's "Sign in with a passkey" button, once the script has shown it."""
    page.goto("/login" + (f"?next={quote(next_url, safe='')}" if next_url else ""))
    button = page.locator("#passkey-signin")
    expect(button).to_be_visible()
    expect(button).to_have_text("Sign in with a passkey")
    return button


def _bearer(site: Site, username: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {site.access_token(username, PASSWORD)}"}


def _turn_on_totp(site: Site, username: str) -> str:
    """Two-factor authentication on, through the API; returns the TOTP secret."""
    headers = _bearer(site, username)
    setup = httpx.post(
        site.url("/users/me/mfa/totp/setup"), json={"password": PASSWORD}, headers=headers
    )
    assert setup.status_code == 200, setup.text
    secret = str(setup.json()["secret"])
    confirm = httpx.post(
        site.url("/users/me/mfa/totp/confirm"),
        json={"code": pyotp.TOTP(secret).now()},
        headers=headers,
    )
    assert confirm.status_code == 200, confirm.text
    return secret


def _next_code(secret: str) -> str:
    """The code of the next time step (confirming spent the current one; the server accepts one
    step either side)."""
    return pyotp.TOTP(secret).at(time.time(), counter_offset=1)


def _listed(page: Page) -> list[dict[str, Any]]:
    """GET /users/me/passkeys with the browser's session cookie."""
    response = page.context.request.get("/users/me/passkeys")
    assert response.status == 200, response.text()
    return list(response.json())


# --- tests ------------------------------------------------------------------------------------


def test_add_a_passkey_on_the_account_page_then_sign_in_with_it(
    site: Site, new_context: NewContext
) -> None:
    username = site.new_username("ada")
    site.create_user(username)
    page, calls = _browser(new_context)
    authenticator = Authenticator.attach(page)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))

    section = _section(page)
    expect(section.locator("#passkeys-heading")).to_have_text("Passkeys")
    expect(section.locator("li.passkey-empty")).to_have_text("No passkeys yet.")
    expect(section.locator("li.passkey")).to_have_count(0)
    expect(page.locator("#passkey-add")).to_have_text("Add a passkey")
    site.snap_part(page, "section:has(#passkeys-heading)", "account-passkeys-empty")

    _add_passkey(site, page, "Work laptop")
    item = section.locator("li.passkey")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("Work laptop")
    expect(item).to_contain_text("Added ")
    expect(item).to_contain_text("Never used")
    expect(section.locator("li.passkey-empty")).to_have_count(0)
    site.snap(page, "account-passkey-added")

    # The authenticator now holds one discoverable credential for "localhost", for this user.
    [held] = authenticator.credentials()
    assert held["rpId"] == "localhost", held
    assert held["isResidentCredential"] is True, held
    assert held["userName"] == username, held
    listed = _listed(page)
    assert [(p["name"], p["last_used_at"]) for p in listed] == [("Work laptop", None)], listed
    expect(item).to_have_attribute("data-passkey-id", str(listed[0]["id"]))

    _sign_out(page)
    response = page.goto("/login")
    assert response is not None
    assert response.headers["content-security-policy"] == CSP
    expect(page.locator("script:not([src])")).to_have_count(0)
    expect(page.locator("script[src$='/assets/authdb-passkeys.js']")).to_have_count(1)
    expect(page.get_by_label("Username or email")).to_have_attribute(
        "autocomplete", "username webauthn"
    )
    expect(page.locator("#passkey-error")).to_have_attribute("role", "alert")
    button = _passkey_button(page)
    site.snap(page, "login-passkey")
    button.click()
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#profile-username")).to_have_value(username)
    assert _cookies(page)[SESSION_COOKIE]["httpOnly"] is True

    # The button asked for a passkey (a modal request, after the page's conditional request).
    modal = [c for c in calls if c["call"] == "get" and c["mediation"] != "conditional"]
    assert len(modal) == 1, calls
    [after] = authenticator.credentials()
    assert after["signCount"] > held["signCount"], (held, after)
    expect(item).to_contain_text("Last used ")
    expect(item).not_to_contain_text("Never used")
    assert _listed(page)[0]["last_used_at"] is not None


def test_an_authenticator_is_not_added_twice_and_an_unnamed_passkey_is_named_after_the_device(
    site: Site, new_context: NewContext
) -> None:
    _, page, authenticator = _signed_in_with_a_passkey(site, new_context)
    section = _section(page)

    # The same authenticator again: the browser refuses (excludeCredentials); the page says so.
    page.locator("#passkey-name").fill("Laptop again")
    page.locator("#passkey-password").fill(PASSWORD)
    page.locator("#passkey-add").click()
    expect(page.locator("html")).to_have_attribute("data-create", "InvalidStateError")
    expect(page.locator("#passkey-add")).to_be_enabled()
    expect(page.locator("#passkey-status")).not_to_have_text("")
    expect(page).to_have_url(site.url("/account?notice=passkey_added"))
    expect(section.locator("li.passkey")).to_have_count(1)
    assert len(authenticator.credentials()) == 1
    site.snap_part(page, "section:has(#passkeys-heading)", "account-passkey-excluded")

    # Another authenticator, no name given: named after the browser's User-Agent.
    authenticator.remove()
    other = Authenticator.attach(page)
    _add_passkey(site, page, None)
    items = section.locator("li.passkey")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("Laptop")
    expect(items.nth(1)).to_contain_text("Chrome on Linux")
    assert [p["name"] for p in _listed(page)] == ["Laptop", "Chrome on Linux"]
    assert len(other.credentials()) == 1


def test_conditional_ui_signs_in_from_the_username_field(
    site: Site, new_context: NewContext
) -> None:
    username, first, authenticator = _signed_in_with_a_passkey(site, new_context)
    [credential] = authenticator.credentials()
    _sign_out(first)

    # Another browser with the same passkey, and conditional requests left to Chromium.
    page, calls = _browser(new_context, hold=False)
    Authenticator.attach(page).add(credential)
    page.goto("/login")
    # Chromium's virtual authenticator answers the username field's conditional request at once.
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#profile-username")).to_have_value(username)
    assert SESSION_COOKIE in _cookies(page)
    assert {"call": "isConditionalMediationAvailable", "answer": True} in calls, calls
    gets = [c["mediation"] for c in calls if c["call"] == "get"]
    assert gets == ["conditional"], calls


def test_with_two_factor_on_a_verified_passkey_is_enough_and_can_follow_the_password(
    site: Site, new_context: NewContext
) -> None:
    username, page, _ = _signed_in_with_a_passkey(site, new_context)
    _turn_on_totp(site, username)
    refused = site.token(username, PASSWORD)
    assert refused.status_code == 403, refused.text
    assert refused.json()["mfa_methods"] == ["totp", "recovery_code", "webauthn"]
    _sign_out(page)

    # A passkey with user verification: both factors at once, no code asked.
    _passkey_button(page).click()
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#profile-username")).to_have_value(username)
    _sign_out(page)

    # The password first: then the passkey serves as the second factor.
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/login/mfa"))
    use_passkey = page.locator("#passkey-mfa")
    expect(use_passkey).to_be_visible()
    expect(use_passkey).to_have_text("Use a passkey")
    site.snap(page, "login-mfa-passkey")
    assert SESSION_COOKIE not in _cookies(page)
    use_passkey.click()
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#profile-username")).to_have_value(username)


def test_with_two_factor_on_a_passkey_without_user_verification_still_needs_the_code(
    site: Site, new_context: NewContext
) -> None:
    username, first, authenticator = _signed_in_with_a_passkey(site, new_context)
    secret = _turn_on_totp(site, username)
    [credential] = authenticator.credentials()
    _sign_out(first)

    # The same key on an authenticator that cannot verify the user.
    page, _ = _browser(new_context, allow=[credential["credentialId"]])
    Authenticator.attach(page, NOT_VERIFYING).add(credential)
    _passkey_button(page).click()
    expect(page).to_have_url(site.url("/login/mfa"))
    assert SESSION_COOKIE not in _cookies(page)
    page.get_by_label("6-digit code").fill(_next_code(secret))
    page.keyboard.press("Enter")
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#profile-username")).to_have_value(username)


def test_removing_a_passkey_takes_the_password(site: Site, new_context: NewContext) -> None:
    _, page, _ = _signed_in_with_a_passkey(site, new_context)
    section = _section(page)
    item = section.locator("li.passkey")
    remove = item.locator("button[type=submit]")
    expect(item.locator("form")).to_have_attribute(
        "action", re.compile(r"/account/passkeys/\d+/delete$")
    )
    # The form stays folded until asked for.
    expect(remove).to_be_hidden()
    item.locator("summary").click()
    expect(remove).to_contain_text("Remove")

    item.locator("input[name=password]").fill("not the password at all")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        remove.click()
    assert posted.value.status == 400
    expect(section).to_contain_text("Incorrect password")
    expect(item).to_have_count(1)
    site.snap_part(page, "section:has(#passkeys-heading)", "account-passkey-remove-error")
    assert len(_listed(page)) == 1

    # Refused, it comes back unfolded with the error.
    expect(item.locator("details")).to_have_attribute("open", "")
    item.locator("input[name=password]").fill(PASSWORD)
    remove.click()
    expect(page).to_have_url(site.url("/account?notice=passkey_removed"))
    expect(page.get_by_text("The passkey has been removed.")).to_be_visible()
    expect(item).to_have_count(0)
    expect(section.locator("li.passkey-empty")).to_have_text("No passkeys yet.")
    assert _listed(page) == []

    # The authenticator still has the key, but the account no longer knows it.
    _sign_out(page)
    _passkey_button(page).click()
    expect(page.locator("#passkey-error")).to_have_text(PASSKEY_FAILED)
    expect(page.locator("#passkey-error")).to_be_visible()
    expect(page).to_have_url(site.url("/login"))
    assert SESSION_COOKIE not in _cookies(page)


def test_a_refused_ceremony_says_so_and_the_button_still_works(
    site: Site, new_context: NewContext
) -> None:
    username, page, authenticator = _signed_in_with_a_passkey(site, new_context)
    _sign_out(page)

    # The authenticator fails to verify the person: the browser refuses, the page says so.
    authenticator.set_user_verified(False)
    button = _passkey_button(page, next_url="/account?tab=passkeys")
    button.click()
    expect(page.locator("html")).to_have_attribute("data-get", "NotAllowedError")
    error = page.locator("#passkey-error")
    expect(error).to_be_visible()
    expect(error).not_to_have_text("")
    site.snap(page, "login-passkey-error")
    assert urlsplit(page.url).path == "/login"
    assert SESSION_COOKIE not in _cookies(page)

    authenticator.set_user_verified(True)
    button.click()
    expect(page).to_have_url(site.url("/account?tab=passkeys"))
    expect(page.locator("#profile-username")).to_have_value(username)


@pytest.mark.parametrize("site_host", ["127.0.0.1"], indirect=True)
def test_with_an_ip_address_public_url_there_are_no_passkeys(site: Site, page: Page) -> None:
    assert urlsplit(site.base).hostname == "127.0.0.1"
    username = site.new_username("ip")
    site.create_user(username)

    page.goto("/login")
    expect(page.get_by_label("Username or email")).to_be_visible()
    expect(page.locator("#passkey-login")).to_have_count(0)
    expect(page.locator("#passkey-signin")).to_have_count(0)
    site.sign_in(page, username, PASSWORD)
    expect(page).to_have_url(site.url("/account"))
    expect(page.locator("#passkey-add")).to_have_count(0)

    refused = httpx.post(site.url("/passkeys/login/options"), json={}, timeout=30)
    assert refused.status_code == 409, refused.text
    assert refused.json() == {"detail": NEEDS_A_NAME}
    refused = httpx.post(
        site.url("/users/me/passkeys/options"), headers=_bearer(site, username), timeout=30
    )
    assert refused.status_code == 409, refused.text
    assert refused.json() == {"detail": NEEDS_A_NAME}


def test_opened_at_another_address_the_pages_say_where_passkeys_work(
    site: Site, chromium: Browser
) -> None:
    """The server is http://localhost:PORT; a person who opens http://127.0.0.1:PORT is told
    where passkeys work instead of meeting the browser's "invalid domain"."""
    elsewhere = site.base.replace("//localhost:", "//127.0.0.1:")
    assert elsewhere != site.base
    username = site.new_username("elsewhere")
    site.create_user(username)
    context = chromium.new_context(base_url=elsewhere)
    errors: list[str] = []
    context.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page = context.new_page()
        page.goto("/login")
        told = f"Passkeys work only at {site.base}: open this page there to use them."
        expect(page.locator("#passkey-error")).to_have_text(told)
        expect(page.locator("#passkey-signin")).to_be_hidden()
        site.sign_in(page, username, PASSWORD)
        expect(page).to_have_url(elsewhere + "/account")
        expect(page.locator("#passkey-status")).to_have_text(told)
        expect(page.locator("#passkey-add")).to_be_disabled()
        assert errors == []
    finally:
        context.close()
