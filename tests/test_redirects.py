"""``next=`` after sign-in: a path on this site or an allowed origin, nothing else.

The unit tests read URLs the way browsers do (WHATWG URL parser): a backslash is a slash in
http(s) URLs, tabs and newlines anywhere are dropped, leading and trailing spaces and controls
are trimmed, and ``https:evil.example`` is absolute. The HTTP tests run on both databases.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authdb.http.redirects import safe_next
from authdb.origins import origin_of
from tests import test_pages
from tests.test_pages import Site, assert_page_headers, set_cookies

PUBLIC = "http://auth.example.test"
ALLOWED = ["https://app.example.com", "http://localhost:3000"]

make_site = test_pages.make_site


def check(value: str | None, allowed: list[str] | None = None) -> str | None:
    return safe_next(
        value, public_url=PUBLIC, allowed_origins=ALLOWED if allowed is None else allowed
    )


def browser_reading(value: str, base: str = PUBLIC) -> str:
    """Where a browser goes for ``Location: value`` on a page of ``base``."""
    value = value.strip("".join(chr(c) for c in range(0x21)))  # C0 controls and space
    value = re.sub("[\t\r\n]", "", value).replace("\\", "/")
    return urljoin(base + "/", value)


EVIL = [
    # Dot segments: "/..//evil.example" resolves to "//evil.example" (a lenient proxy's redirect).
    "/..//evil.example",
    "/.//evil.example/x",
    "/x/../../%2e%2e//evil.example",
    "/%2E%2E//evil.example",
    "//evil.example",
    "//evil.example/account",
    "///evil.example",
    "https:evil.example",
    "https:/evil.example",
    "http:evil.example",
    "https:\\\\evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "java\tscript:alert(1)",
    " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    "\n//evil.example",
    " //evil.example",
    "/ /evil",
    "https://evil.example",
    "https://evil.example/account",
    "http://auth.example.test.evil.example/",
    "http://evil.example?http://auth.example.test/",
    "http://evil.example#http://auth.example.test/",
    "https://app.example.com@evil.example",
    "https://app.example.com:443@evil.example/",
    "https://user:pass@app.example.com/",
    "http://user@auth.example.test/account",
    "http://auth.example.test\\@evil.example/",
    "http://auth.example.test%2F@evil.example/",
    "HTTPS://evil.example",
    "HTTP://evil.example/",
    "Https://app.example.com/",  # not plainly lower case: refused, though allowed
    "HTTP://auth.example.test/account",
    "https://auth.example.test/account",  # another scheme is another origin
    "http://auth.example.test:8080/account",
    "https://app.example.com:8443/",
    "http://localhost:3001/",
    "http://localhost/",
    "http://auth.example.test:99999/",
    "http://[::1]/",
    # Brackets Python's urlsplit refuses to parse (ValueError), which must not escape.
    "http://[",
    "http://[::1",
    "http://auth.example.test]/",
    "https://[vx.evil]/",
    "http://]x[",
    "ftp://auth.example.test/",
    "account",
    "./account",
    "?next=//evil.example",
    "#/account",
    "",
    None,
    "/" + "a" * 2048,
]

SAFE = [
    "/account",
    "/account?x=1",
    "/account?x=1&y=2#top",
    "/",
    "/a/b/c",
    "/%2F%2Fevil.example",  # one path segment on this site
    "/account?next=//evil.example",
    "http://auth.example.test",
    "http://auth.example.test/",
    "http://auth.example.test/account?x=1",
    "http://AUTH.example.test/account",  # host names are case-insensitive
    "http://auth.example.test:80/account",  # the default port is the same origin
    "https://app.example.com/callback?code=1",
    "https://app.example.com:443/callback",
    "http://localhost:3000/",
]


@pytest.mark.parametrize("value", EVIL)
def test_unsafe_next_values_are_refused(value: str | None) -> None:
    assert check(value) is None


@pytest.mark.parametrize("value", SAFE)
def test_same_site_paths_and_allowed_origins_pass_unchanged(value: str) -> None:
    assert check(value) == value
    assert origin_of(browser_reading(value)) in {PUBLIC, *ALLOWED}


def test_without_allowed_origins_only_this_site_passes() -> None:
    assert check("https://app.example.com/callback", allowed=[]) is None
    assert check("/account", allowed=[]) == "/account"
    assert check(f"{PUBLIC}/account", allowed=[]) == f"{PUBLIC}/account"


def test_origin_of() -> None:
    assert origin_of("https://App.Example.com:443/x") == "https://app.example.com"
    assert origin_of("http://h:8080") == "http://h:8080"
    assert origin_of("javascript:alert(1)") is None
    assert origin_of("http://h:99999/") is None
    assert origin_of("//evil.example") is None


# Pieces that make URLs ambiguous, so that the property explores the parser's corners.
# fmt: off
_PIECES = st.sampled_from([
    "/", "//", "\\", "/\\", ":", "@", ".", "..", "?", "#", "%", "%2f", "%5c", " ", "\t", "\n",
    "\r", "\x00", "\x0b", "http", "https", "HTTP", "javascript", "data", ":80", ":443", ":3000",
    ":8443", "evil.example", "auth.example.test", "app.example.com", "localhost", "[::1]", "[",
    "]", "user", "a", "0", "\u3002", "\uff0f", "\u2044", "~",
])
# fmt: on
_CANDIDATES = st.one_of(
    st.lists(_PIECES, max_size=12).map("".join),
    st.text(max_size=40),
    st.tuples(
        st.sampled_from(["", "/", "//", "http://", "https://", "https:", "/\\", "\\\\"]),
        st.sampled_from(["", "auth.example.test", "app.example.com", "localhost:3000"]),
        st.lists(_PIECES, max_size=8).map("".join),
    ).map("".join),
)


@settings(max_examples=1500, deadline=None)
@given(_CANDIDATES)
def test_whatever_passes_lands_on_this_site_or_an_allowed_origin(value: str) -> None:
    chosen = check(value)
    if chosen is None:
        return
    assert chosen == value
    assert origin_of(browser_reading(chosen)) in {PUBLIC, *ALLOWED}, value
    # And the same for a deployment on https under a path-less public URL.
    on_https = safe_next(value, public_url="https://auth.example.test", allowed_origins=[])
    if on_https is not None:
        landed = browser_reading(on_https, "https://auth.example.test")
        assert origin_of(landed) == "https://auth.example.test", value


# -- over HTTP ----------------------------------------------------------------------------


HTTP_EVIL = [
    "//evil.example",
    "https:evil.example",
    "/\\evil.example",
    "javascript:alert(1)",
    "/\t/evil.example",
    "https://app.example.com@evil.example/",
    "HTTPS://evil.example",
    "https://evil.example/",
]


async def test_sign_in_follows_only_safe_next_values(make_site: test_pages.MakeSite) -> None:
    site: Site = await make_site(allowed_redirect_origins="https://app.example.com")
    await site.create_user()
    # Every page's form-action allows the extra origin: a POST that redirects there is ok.
    page = await (await site.browser()).client.get("/login")
    assert "form-action 'self' https://app.example.com;" in page.headers["content-security-policy"]
    for value in HTTP_EVIL:
        browser = await site.browser()
        response = await browser.sign_in(next_=value)
        assert response.status_code == 303, value
        assert response.headers["location"] == "/account", value
        assert "authdb_session" in set_cookies(response)
    for value, location in (
        ("/account?x=1", "/account?x=1"),
        ("", "/account"),
        (f"{PUBLIC}/account#sessions", f"{PUBLIC}/account#sessions"),
        ("https://app.example.com/after?x=1", "https://app.example.com/after?x=1"),
    ):
        browser = await site.browser()
        response = await browser.sign_in(next_=value)
        assert response.status_code == 303
        assert response.headers["location"] == location


async def test_next_survives_the_login_form_escaped(make_site: test_pages.MakeSite) -> None:
    site: Site = await make_site()
    await site.create_user()
    browser = await site.browser()
    # The account page sends a signed-out browser to sign in, and back afterwards.
    account = await browser.client.get("/account")
    assert account.status_code == 303
    assert account.headers["location"] == "/login?next=/account"
    login = await browser.client.get(account.headers["location"])
    assert 'name="next" value="/account"' in login.text
    hostile = '"><script>alert(1)</script>'
    reflected = await browser.client.get("/login", params={"next": hostile})
    assert reflected.status_code == 200
    assert_page_headers(reflected)
    assert "<script>" not in reflected.text
    assert (
        "&#34;&gt;&lt;script&gt;" in reflected.text or "&quot;&gt;&lt;script&gt;" in reflected.text
    )
    # A failed attempt keeps next for the next try; the right password then follows it.
    wrong = await browser.submit(
        "/login?next=/account?tab=2",
        {"username": "alice", "password": "wrong password!", "next": "/account?tab=2"},
    )
    assert wrong.status_code == 401
    assert 'name="next" value="/account?tab=2"' in wrong.text
    done = await browser.sign_in(next_="/account?tab=2")
    assert done.headers["location"] == "/account?tab=2"


async def test_a_malformed_next_url_falls_back_to_the_account_page(
    make_site: test_pages.MakeSite,
) -> None:
    site: Site = await make_site()
    await site.create_user()
    for value in ("http://[", "https://[vx.evil]/"):
        browser = await site.browser()
        response = await browser.sign_in(next_=value)
        assert response.status_code == 303, (value, response.status_code, response.text[:300])
        assert response.headers["location"] == "/account"
