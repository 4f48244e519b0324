"""CSRF: page forms and cookie-authenticated API calls need the browser's own token.

Every test runs on SQLite and PostgreSQL. The tokens are signed double-submit tokens bound to
the browser's session (or, before sign-in, to no session): see authdb.http.csrf.
"""

from __future__ import annotations

import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import test_pages
from tests.conftest import PASSWORD
from tests.test_pages import (
    CSRF_REFUSED,
    NEW_PASSWORD,
    Browser,
    Site,
    assert_csrf_refused_page,
    post_form,
)

# The page tests' fixtures: a started service app, and browsers on it.
make_site = test_pages.make_site
site = test_pages.site

REFUSED_JSON = {"detail": CSRF_REFUSED}


def assert_refused_json(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    assert response.json() == REFUSED_JSON


def _flip(token: str) -> str:
    """The token with its last character changed."""
    last = "A" if token[-1] != "A" else "B"
    return token[:-1] + last


async def _full_name(browser: Browser) -> str | None:
    me = await browser.client.get("/users/me")
    assert me.status_code == 200, me.text
    return me.json()["full_name"]  # type: ignore[no-any-return]


# -- page forms ---------------------------------------------------------------------------


async def test_page_forms_refuse_missing_wrong_and_foreign_tokens(site: Site) -> None:
    await site.create_user("alice")
    await site.create_user("bob")
    alice = await (await site.browser()).signed_in("alice")
    bob = await (await site.browser()).signed_in("bob")
    other_alice = await (await site.browser()).signed_in("alice")
    other_id = await other_alice.session_id()
    own = alice.csrf_cookie
    assert own and bob.csrf_cookie and other_alice.csrf_cookie
    fields = {
        "/login": {"username": "alice", "password": PASSWORD},
        "/register": {"username": "mallory", "email": "m@example.com", "password": PASSWORD},
        "/forgot-password": {"email": "alice@example.com"},
        "/reset-password": {"token": "x", "password": PASSWORD, "password_confirm": PASSWORD},
        "/verify": {"token": "x"},
        "/logout": {},
        "/account/profile": {"username": "alice", "full_name": "Changed"},
        "/account/email": {"email": "new@example.com", "current_password": PASSWORD},
        "/account/password": {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        },
        "/account/delete": {"password": PASSWORD},
        f"/account/sessions/{other_id}/revoke": {},
    }
    foreign = [bob.csrf_cookie, other_alice.csrf_cookie]
    for path, data in fields.items():
        attempts: list[dict[str, str]] = [
            {},
            {"csrf_token": ""},
            {"csrf_token": "not-a-token"},
            {"csrf_token": _flip(own)},
            {"csrf_token": own + "x"},
            *({"csrf_token": token} for token in foreign),
        ]
        for attempt in attempts:
            response = await post_form(alice.client, path, {**data, **attempt})
            assert_csrf_refused_page(response)
        # Both the cookie and the field set to a token of another browser's session (as a
        # sibling subdomain could plant it): the token is bound to a session not this one.
        for token in foreign:
            alice.set_csrf_cookie(token)
            response = await post_form(alice.client, path, {**data, "csrf_token": token})
            assert_csrf_refused_page(response)
        alice.set_csrf_cookie(own)
    # Nothing happened: alice is signed in, unchanged, her other session alive, no mallory.
    assert await _full_name(alice) is None
    assert (await alice.client.get("/users/me")).json()["pending_email"] is None
    assert (await other_alice.client.get("/users/me")).status_code == 200
    api = await site.api()
    assert (await api.post("/token", data={"username": "alice", "password": PASSWORD})).is_success
    assert (
        await api.post("/token", data={"username": "mallory", "password": PASSWORD})
    ).status_code == 401
    assert site.mailbox.messages == []
    # And with its own token, the same browser's form works.
    saved = await alice.submit(
        "/account", {"username": "alice", "full_name": "Changed"}, action="/account/profile"
    )
    assert saved.status_code == 303
    assert await _full_name(alice) == "Changed"
    # Login CSRF: an attacker's (anonymous) form token, the victim's cookies.
    victim = await site.browser()
    await victim.token_for("/login")
    attacker_token = await (await site.browser()).token_for("/login")
    assert victim.csrf_cookie != attacker_token
    planted = await victim.client.post(
        "/login", data={"csrf_token": attacker_token, "username": "bob", "password": PASSWORD}
    )
    assert_csrf_refused_page(planted)
    assert victim.session_cookie is None
    # Planting the attacker's token as the victim's authdb_csrf cookie too (a sibling
    # subdomain can set that cookie) does not help: the token is bound to the attacker's
    # pre-session cookie, which the victim's browser does not hold.
    victim.set_csrf_cookie(attacker_token)
    planted = await victim.client.post(
        "/login", data={"csrf_token": attacker_token, "username": "bob", "password": PASSWORD}
    )
    assert_csrf_refused_page(planted)
    assert victim.session_cookie is None


# -- cookie-authenticated API calls -------------------------------------------------------


async def test_cookie_api_calls_need_the_matching_header(site: Site) -> None:
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    second = await (await site.browser()).signed_in()  # another session of the same user
    api = await site.api()
    bearer = await site.bearer()
    second_id = await second.session_id()
    (bearer_id,) = [
        s["id"] for s in await alice.sessions() if not s["current"] and s["id"] != second_id
    ]
    own = alice.csrf_cookie
    foreign = second.csrf_cookie
    assert own and foreign and own != foreign
    calls = [
        ("PATCH", "/users/me", {"full_name": "Changed"}),
        ("POST", "/logout", None),
        ("DELETE", f"/users/me/sessions/{bearer_id}", None),
        (
            "POST",
            "/users/me/password",
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        ),
        ("DELETE", "/users/me", {"password": PASSWORD}),
    ]
    for method, path, body in calls:
        for headers in (
            {},
            {"X-CSRF-Token": ""},
            {"X-CSRF-Token": "nope"},
            {"X-CSRF-Token": _flip(own)},
            {"X-CSRF-Token": foreign},
        ):
            response = await alice.client.request(method, path, json=body, headers=headers)
            assert_refused_json(response)
        # Cookie and header both another session's token: bound to the wrong session.
        alice.set_csrf_cookie(foreign)
        response = await alice.client.request(
            method, path, json=body, headers={"X-CSRF-Token": foreign}
        )
        assert_refused_json(response)
        # The right header but no CSRF cookie to match it.
        alice.client.cookies.delete("authdb_csrf")
        response = await alice.client.request(
            method, path, json=body, headers={"X-CSRF-Token": own}
        )
        assert_refused_json(response)
        alice.set_csrf_cookie(own)
    # Nothing changed.
    assert await _full_name(alice) is None
    assert (await api.get("/users/me", headers=bearer)).status_code == 200
    assert (await second.client.get("/users/me")).status_code == 200
    # With the right token each call goes through.
    good = alice.api_headers()
    patched = await alice.client.patch("/users/me", json={"full_name": "Changed"}, headers=good)
    assert patched.status_code == 200 and patched.json()["full_name"] == "Changed"
    ended = await alice.client.delete(f"/users/me/sessions/{bearer_id}", headers=good)
    assert ended.status_code == 204
    assert (await api.get("/users/me", headers=bearer)).status_code == 401
    changed = await alice.client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=good,
    )
    assert changed.status_code == 204, changed.text
    assert (await second.client.get("/users/me")).status_code == 401  # other sessions end
    assert (await alice.client.get("/users/me")).status_code == 200  # this one stays
    out = await alice.client.post("/logout", headers=good)
    assert out.status_code == 204
    assert (await alice.client.get("/users/me")).status_code == 401


async def test_safe_methods_and_bearer_requests_need_no_token(site: Site) -> None:
    await site.create_user("alice")
    await site.create_user("bob")
    alice = await (await site.browser()).signed_in("alice")
    assert (await alice.client.get("/users/me")).status_code == 200
    assert (await alice.client.get("/users/me/sessions")).status_code == 200
    # A bearer token wins: the browser's cookies are not even looked at.
    bob = await site.bearer("bob")
    patched = await alice.client.patch("/users/me", json={"full_name": "Bob"}, headers=bob)
    assert patched.status_code == 200, patched.text
    assert patched.json()["username"] == "bob"
    assert await _full_name(alice) is None
    # A bad Authorization header does not fall back to the cookie.
    for value in ("Bearer not-a-token", "Basic YWxpY2U6cGFzc3dvcmQ=", "Bearer"):
        response = await alice.client.get("/users/me", headers={"Authorization": value})
        assert response.status_code == 401, value
        response = await alice.client.patch(
            "/users/me",
            json={"full_name": "X"},
            headers={"Authorization": value, **alice.api_headers()},
        )
        assert response.status_code == 401, value
    assert await _full_name(alice) is None


async def test_a_pre_sign_in_token_is_refused_after_sign_in(site: Site) -> None:
    await site.create_user()
    browser = await site.browser()
    before = await browser.token_for("/login")
    await browser.signed_in()
    after = browser.csrf_cookie
    assert after and after != before
    for cookie in (after, before):
        browser.set_csrf_cookie(cookie)
        refused = await browser.client.patch(
            "/users/me", json={"full_name": "X"}, headers={"X-CSRF-Token": before}
        )
        assert_refused_json(refused)
        form = await browser.client.post(
            "/account/profile", data={"csrf_token": before, "username": "alice", "full_name": "X"}
        )
        assert_csrf_refused_page(form)
    browser.set_csrf_cookie(after)
    assert await _full_name(browser) is None
    ok = await browser.client.patch(
        "/users/me", json={"full_name": "X"}, headers={"X-CSRF-Token": after}
    )
    assert ok.status_code == 200
    # Signed out, the session's token is no good for the anonymous forms either.
    out = await browser.client.post("/logout", data={"csrf_token": after})
    assert out.status_code == 303
    anonymous = browser.csrf_cookie
    assert anonymous and anonymous != after
    browser.set_csrf_cookie(after)
    stale = await browser.client.post(
        "/login", data={"csrf_token": after, "username": "alice", "password": PASSWORD}
    )
    assert_csrf_refused_page(stale)


# -- properties ---------------------------------------------------------------------------

_PRINTABLE = st.text(alphabet=st.sampled_from(string.printable[:95]), max_size=160)


def _variants(minted: str) -> st.SearchStrategy[str]:
    """Strings near ``minted`` (and ``minted`` itself), and arbitrary ones."""
    n = len(minted)
    nonce, mac = minted.split(".", 1)
    near = st.one_of(
        st.just(minted),
        st.integers(0, n - 1).map(lambda i: minted[:i]),
        st.integers(0, n - 1).flatmap(
            lambda i: st.sampled_from(string.ascii_letters + string.digits + "-_.").map(
                lambda c: minted[:i] + c + minted[i + 1 :]
            )
        ),
        _PRINTABLE.map(lambda extra: minted + extra),
        _PRINTABLE.map(lambda extra: extra + minted),
        st.just(minted.swapcase()),
        st.just(f"{nonce}.{mac[::-1]}"),
        st.just(f"{nonce[::-1]}.{mac}"),
        st.just(f"{mac}.{nonce}"),
    )
    return st.one_of(near, _PRINTABLE)


@pytest.fixture
async def browsers(site: Site) -> tuple[Browser, Browser]:
    """One signed-in and one anonymous browser on one app, reused by every example."""
    await site.create_user()
    signed_in = await (await site.browser()).signed_in()
    anonymous = await site.browser()
    await anonymous.token_for("/login")
    return signed_in, anonymous


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY
@given(data=st.data())
async def test_any_token_but_the_minted_one_is_refused(
    browsers: tuple[Browser, Browser], data: st.DataObject
) -> None:
    """As X-CSRF-Token of a cookie-authenticated API call, or as the csrf_token of a form
    (signed in or not), only the very token the browser was given passes."""
    where = data.draw(st.sampled_from(["header", "signed-in form", "anonymous form"]))
    browser = browsers[1] if where == "anonymous form" else browsers[0]
    minted = browser.csrf_cookie
    assert minted
    if where == "header":
        candidate = data.draw(_variants(minted))
        response = await browser.client.patch(
            "/users/me", json={}, headers={"X-CSRF-Token": candidate}
        )
        if candidate == minted:
            assert response.status_code == 200, response.text
        else:
            assert_refused_json(response)
    else:
        candidate = data.draw(st.one_of(_variants(minted), st.text(max_size=100)))
        # Empty credentials: with the right token the form is only sent back (422).
        response = await browser.client.post(
            "/login", data={"csrf_token": candidate, "username": "", "password": ""}
        )
        if candidate == minted:
            assert response.status_code == 422, response.text[:500]
        else:
            assert_csrf_refused_page(response)
    assert browser.csrf_cookie == minted


async def test_a_refused_post_leaves_the_csrf_cookie_alone(site: Site) -> None:
    """A cross-site POST arrives without the SameSite cookies; answering it must not replace
    the CSRF cookie of the page the user has open (which would break their next submit)."""
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    token = await alice.token_for("/account")
    foreign = await site.browser()  # a browser without alice's cookies: a cross-site post
    refused = await foreign.client.post("/account/profile", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "set-cookie" not in refused.headers
    # And for alice herself, a refused post (a bad token) changes nothing she holds.
    before = alice.csrf_cookie
    refused = await alice.client.post("/account/profile", data={"csrf_token": "x.y"})
    assert refused.status_code == 403
    assert "set-cookie" not in refused.headers
    assert alice.csrf_cookie == before
    saved = await alice.client.post(
        "/account/profile", data={"csrf_token": token, "username": "alice", "full_name": "A"}
    )
    assert saved.status_code == 303


async def test_a_form_the_browser_says_came_from_another_site_is_refused(site: Site) -> None:
    """Sec-Fetch-Site (sent by every current browser) as a second line behind the token."""
    await site.create_user()
    alice = await (await site.browser()).signed_in()
    token = await alice.token_for("/account")
    for origin in ("cross-site", "same-site"):
        refused = await alice.client.post(
            "/account/profile",
            data={"csrf_token": token, "username": "alice", "full_name": "Evil"},
            headers={"Sec-Fetch-Site": origin},
        )
        assert refused.status_code == 403, origin
    saved = await alice.client.post(
        "/account/profile",
        data={"csrf_token": token, "username": "alice", "full_name": "Ok"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert saved.status_code == 303
