"""Sign-in with another provider, end to end over HTTP (no browser): a real OpenID Connect
provider (oidc-provider, Node) and a GitHub stand-in, on both databases.

The browser side (buttons, cookies in Chromium, the account page) is tests/test_oauth_browser.py.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from authdb import Auth
from authdb.app import create_app
from authdb.db import migrate
from authdb.db.models import AuditEvent, OAuthIdentity, User
from authdb.names import USERNAME_MAX, normalize_username, username_problem
from authdb.services.oauth_accounts import _username_stem
from authdb.settings import Settings
from tests.conftest import PASSWORD, Harness, Mailbox
from tests.github_standin import GitHubStandin
from tests.mfa_helpers import enable_mfa
from tests.oauth_servers import OIDCProvider, follow_to_callback
from tests.test_pages import csrf_field, link_token

pytest_plugins = ["tests.oauth_servers"]

PUBLIC_URL = "http://127.0.0.1:8765"


@dataclass
class Site:
    """An authdb app with providers ``corp`` (OIDC) and ``github`` configured."""

    harness: Harness
    oidc: OIDCProvider
    github: GitHubStandin

    @property
    def client(self) -> httpx.AsyncClient:
        return self.harness.client

    async def start(self, provider: str, next_: str | None = None) -> str:
        """GET /oauth/{provider}/authorize: the provider URL it redirects to."""
        query = {"next": next_} if next_ else None
        response = await self.client.get(f"/oauth/{provider}/authorize", params=query)
        assert response.status_code == 303, response.text
        return response.headers["location"]

    async def answer_to(self, target: str, login: str, *, deny: bool = False) -> str:
        """Play the user at the provider from ``target`` (its authorization URL, or an authdb
        path that redirects there); the callback URL (path and query) it sends back."""
        async with httpx.AsyncClient(trust_env=False, timeout=15) as browser:
            url = await follow_to_callback(browser, target, login, deny=deny)
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
        return f"{parts.path}?{parts.query}"

    async def provider_answer(
        self, provider: str, login: str, *, deny: bool = False, next_: str | None = None
    ) -> str:
        """Play the user at the provider; the callback URL (path and query) it sends back."""
        return await self.answer_to(await self.start(provider, next_), login, deny=deny)

    async def sign_in(self, provider: str, login: str, next_: str | None = None) -> httpx.Response:
        return await self.client.get(await self.provider_answer(provider, login, next_=next_))

    async def sign_out(self) -> None:
        self.client.cookies.clear()

    async def user(self, email: str) -> User | None:
        async with self.harness.auth.core.sessionmaker() as db:
            return await db.scalar(select(User).where(User.email == email))

    async def identities(self, *where: Any) -> list[OAuthIdentity]:
        async with self.harness.auth.core.sessionmaker() as db:
            return list(await db.scalars(select(OAuthIdentity).where(*where)))

    async def me(self) -> httpx.Response:
        return await self.client.get("/users/me")

    async def count(self, model: Any, *where: Any) -> int:
        async with self.harness.auth.core.sessionmaker() as db:
            return int(await db.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    async def events(self, name: str) -> list[AuditEvent]:
        async with self.harness.auth.core.sessionmaker() as db:
            rows = await db.scalars(select(AuditEvent).where(AuditEvent.event == name))
            return list(rows)


def new_login(stem: str = "user") -> str:
    return f"{stem}{secrets.token_hex(4)}"


async def build_site(
    make_harness: Callable[..., Awaitable[Harness]],
    oidc: OIDCProvider,
    github: GitHubStandin,
    **overrides: Any,
) -> Site:
    """A harness with ``corp`` on ``oidc`` and ``github`` on the stand-in, each with a client
    registered for it; ``overrides`` are settings."""
    corp_id, corp_secret = oidc.register_client([f"{PUBLIC_URL}/oauth/corp/callback"])
    gh_id, gh_secret = github.add_client([f"{PUBLIC_URL}/oauth/github/callback"])
    settings: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "oauth_providers": "corp,github",
        "oauth_corp_client_id": corp_id,
        "oauth_corp_client_secret": corp_secret,
        "oauth_corp_issuer": oidc.issuer,
        "oauth_github_client_id": gh_id,
        "oauth_github_client_secret": gh_secret,
        "oauth_github_github_url": github.base_url,
        "oauth_github_api_url": github.api_url,
        **overrides,
    }
    return Site(await make_harness(**settings), oidc, github)


MakeSite = Callable[..., Awaitable[Site]]


@pytest.fixture
async def make_site(
    make_harness: Callable[..., Awaitable[Harness]],
    oidc_provider: OIDCProvider,
    github_standin: GitHubStandin,
) -> MakeSite:
    """``await make_site(oidc=None, **settings)``: a site on the shared providers (or on the
    OIDC provider ``oidc``), on the test's database (several sites of a test share it)."""

    async def make(oidc: OIDCProvider | None = None, **overrides: Any) -> Site:
        return await build_site(make_harness, oidc or oidc_provider, github_standin, **overrides)

    return make


@pytest.fixture
async def site(make_site: MakeSite) -> Site:
    return await make_site()


async def test_sign_up_then_sign_in_again_with_oidc(site: Site) -> None:
    login = new_login("ada")
    site.oidc.add_account(login, f"{login}@corp.example", preferred_username=login, name="Ada L")
    response = await site.sign_in("corp", login)
    assert response.status_code == 303, response.text
    me = await site.me()
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["username"] == login
    assert body["email"] == f"{login}@corp.example"
    assert body["is_verified"] is True
    assert body["full_name"] == "Ada L"
    # A second sign-in finds the same user: no new row.
    await site.client.post("/logout", data={})
    site.client.cookies.clear()
    again = await site.sign_in("corp", login)
    assert again.status_code == 303, again.text
    assert (await site.me()).json()["id"] == body["id"]
    assert await site.count(User, User.email == f"{login}@corp.example") == 1
    assert await site.count(OAuthIdentity, OAuthIdentity.provider == "corp") == 1


async def test_github_sign_up(site: Site) -> None:
    user_id = secrets.randbelow(10**9)
    login = new_login("octo")
    site.github.add_user(
        user_id,
        login,
        name="Octo Cat",
        public_email=None,
        emails=[{"email": f"{login}@gh.example", "primary": True, "verified": True}],
    )
    response = await site.sign_in("github", login)
    assert response.status_code == 303, response.text
    me = (await site.me()).json()
    assert me["username"] == login
    assert me["is_verified"] is True
    async with site.harness.auth.core.sessionmaker() as db:
        row = await db.scalar(select(OAuthIdentity).where(OAuthIdentity.provider == "github"))
    assert row is not None and row.subject == str(user_id)


async def test_password_of_provider_account_is_unusable(site: Site) -> None:
    login = new_login("pw")
    site.oidc.add_account(login, f"{login}@corp.example", preferred_username=login)
    assert (await site.sign_in("corp", login)).status_code == 303
    token = await site.client.post("/token", data={"username": login, "password": "!"})
    assert token.status_code == 401
    assert parse_qs("") == {}


# --- helpers --------------------------------------------------------------------------------


def text_of(response: httpx.Response) -> str:
    """The page's text with HTML entities decoded (quotes and apostrophes are escaped)."""
    return html.unescape(response.text)


def corp_account(
    site: Site,
    stem: str = "user",
    *,
    verified: bool = True,
    email: str | None = None,
    username: str | None = None,
    name: str | None = None,
) -> tuple[str, str]:
    """A fresh account at the OIDC provider: (its login/sub, its email)."""
    login = new_login(stem)
    address = email or f"{login}@corp.example"
    site.oidc.add_account(
        login, address, email_verified=verified, preferred_username=username or login, name=name
    )
    return login, address


# --- new accounts ---------------------------------------------------------------------------


async def test_an_unverified_provider_email_makes_an_unverified_user_and_mails_a_link(
    site: Site, mailbox: Mailbox
) -> None:
    login, email = corp_account(site, "unv", verified=False)
    response = await site.sign_in("corp", login)
    assert response.status_code == 303, response.text
    me = (await site.me()).json()
    assert me["email"] == email
    assert me["is_verified"] is False
    await mailbox.wait_for(1)
    (message,) = mailbox.to(email)
    assert link_token(message, "verify")
    # The link verifies the account.
    verified = await site.client.post("/verify", json={"token": link_token(message, "verify")})
    assert verified.status_code in (200, 204), verified.text
    user = await site.user(email)
    assert user is not None and user.is_verified
    # A verified address sends no mail.
    await site.sign_out()
    login, email = corp_account(site, "ver")
    assert (await site.sign_in("corp", login)).status_code == 303
    assert (await site.me()).json()["is_verified"] is True
    assert mailbox.to(email) == []


async def test_require_verified_email_refuses_the_new_unverified_user_and_mails_it(
    make_site: MakeSite, mailbox: Mailbox
) -> None:
    site = await make_site(require_verified_email=True)
    login, email = corp_account(site, "req", verified=False)
    response = await site.sign_in("corp", login)
    assert response.status_code == 400, response.text
    assert "Verify your email address first" in text_of(response)
    assert (await site.me()).status_code == 401
    user = await site.user(email)
    assert user is not None and not user.is_verified
    await mailbox.wait_for(1)
    (message,) = mailbox.to(email)
    token = link_token(message, "verify")
    (row,) = await site.identities(OAuthIdentity.subject == login)
    assert row.confirmed is False
    assert (await site.client.post("/verify", json={"token": token})).status_code in (200, 204)
    # The address is verified; the link the provider never vouched for is gone with it (the
    # browser that followed the link was not signed in to the account: it could not be).
    user = await site.user(email)
    assert user is not None and user.is_verified
    assert await site.identities(OAuthIdentity.subject == login) == []
    (dropped,) = await site.events("oauth_unlinked")
    assert dropped.user_id == user.id
    assert dropped.detail == {"provider": "corp", "by": "email_proven"}
    # So the identity finds an account of its address it is not linked to.
    again = await site.sign_in("corp", login)
    assert again.status_code == 409, again.text
    assert "already exists" in text_of(again)
    assert (await site.me()).status_code == 401


async def test_an_identity_with_an_accounts_email_is_not_linked(site: Site) -> None:
    name = new_login("owner")
    email = f"{name}@corp.example"
    await site.harness.create_user(name, email=email)
    login, _ = corp_account(site, "taker", email=email)
    response = await site.sign_in("corp", login)
    assert response.status_code == 409, response.text
    assert "already exists" in text_of(response)
    assert "link Corp from your account page" in text_of(response)
    assert (await site.me()).status_code == 401
    assert await site.count(User) == 1
    assert await site.identities() == []
    assert await site.events("oauth_linked") == []
    # A provider that shares no email: no account can be made.
    silent = new_login("silent")
    site.oidc.add_account(silent, None, preferred_username=silent)
    response = await site.sign_in("corp", silent)
    assert response.status_code == 400, response.text
    assert "Corp did not share your email address" in text_of(response)
    assert await site.count(User) == 1
    assert await site.identities() == []


async def test_link_verified_email_links_only_when_both_sides_verified(
    make_site: MakeSite,
) -> None:
    site = await make_site(oauth_link_verified_email=True)
    # Both verified: linked and signed in.
    both = new_login("both")
    await site.harness.create_user(both, email=f"{both}@corp.example")
    login, _ = corp_account(site, "b", email=f"{both}@corp.example")
    response = await site.sign_in("corp", login)
    assert response.status_code == 303, response.text
    assert (await site.me()).json()["username"] == both
    (row,) = await site.identities(OAuthIdentity.subject == login)
    (linked,) = await site.events("oauth_linked")
    assert linked.user_id == row.user_id
    assert linked.detail is not None and linked.detail["by"] == "verified_email"
    await site.sign_out()
    # The account is unverified (someone registered the address first): no takeover.
    squatter = new_login("squat")
    await site.harness.create_user(squatter, email=f"{squatter}@corp.example", is_verified=False)
    victim, _ = corp_account(site, "v", email=f"{squatter}@corp.example")
    refused = await site.sign_in("corp", victim)
    assert refused.status_code == 409, refused.text
    assert (await site.me()).status_code == 401
    assert await site.identities(OAuthIdentity.subject == victim) == []
    # The provider does not vouch for the address: not linked either.
    owner = new_login("own")
    await site.harness.create_user(owner, email=f"{owner}@corp.example")
    claimer, _ = corp_account(site, "c", email=f"{owner}@corp.example", verified=False)
    refused = await site.sign_in("corp", claimer)
    assert refused.status_code == 409, refused.text
    assert await site.identities(OAuthIdentity.subject == claimer) == []
    assert await site.count(User) == 3
    assert len(await site.events("oauth_linked")) == 1


async def test_registration_closed_refuses_a_new_identity_but_a_linked_one_signs_in(
    make_site: MakeSite,
) -> None:
    open_site = await make_site()
    linked, _ = corp_account(open_site, "linked")
    assert (await open_site.sign_in("corp", linked)).status_code == 303
    # The same database, registration now closed.
    site = await make_site(registration_enabled=False)
    stranger, email = corp_account(site, "stranger")
    refused = await site.sign_in("corp", stranger)
    assert refused.status_code == 403, refused.text
    assert "registration is closed" in text_of(refused)
    assert await site.user(email) is None
    assert (await site.me()).status_code == 401
    again = await site.sign_in("corp", linked)
    assert again.status_code == 303, again.text
    assert (await site.me()).json()["username"] == linked


async def test_the_oauth_feature_off_has_no_routes(
    make_settings: Callable[..., Settings], oidc_provider: OIDCProvider
) -> None:
    settings = make_settings(
        public_url=PUBLIC_URL,
        oauth_providers="corp",
        oauth_corp_client_id="id",
        oauth_corp_client_secret="secret",
        oauth_corp_issuer=oidc_provider.issuer,
    )
    auth = Auth(settings, features={"oauth": False})
    app = create_app(auth=auth)
    await migrate.upgrade(auth.core.engine)
    await auth.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            for path in ("/oauth/corp/authorize", "/oauth/corp/callback?state=x&code=y"):
                assert (await http.get(path)).status_code == 404, path
            login = await http.get("/login")
            assert login.status_code == 200
            assert "/oauth/corp/authorize" not in login.text
    finally:
        await auth.shutdown()


async def test_a_locked_or_disabled_account_is_refused_with_a_page(make_site: MakeSite) -> None:
    site = await make_site(login_max_failures=3, login_lockout_minutes=15)
    name = new_login("lock")
    await site.harness.create_user(name, email=f"{name}@corp.example")
    login, _ = corp_account(site, "l", email=f"{name}@corp.example")
    # Linked from the account, then locked by wrong passwords.
    await link_corp(site, name, login)
    for _ in range(3):
        wrong = await site.client.post("/token", data={"username": name, "password": "wrong!"})
        assert wrong.status_code == 401
    await site.sign_out()
    locked = await site.sign_in("corp", login)
    assert locked.status_code == 429, locked.text
    assert "Too many attempts" in text_of(locked)
    assert int(locked.headers["retry-after"]) > 0
    assert (await site.me()).status_code == 401
    assert await site.events("login_locked")
    # A disabled account (signed up through the provider) is refused with a page.
    login, email = corp_account(site, "off")
    assert (await site.sign_in("corp", login)).status_code == 303
    user = await site.user(email)
    assert user is not None
    await site.harness.auth.users.disable(user.id)
    await site.sign_out()
    refused = await site.sign_in("corp", login)
    assert refused.status_code == 400, refused.text
    assert "This account is disabled." in text_of(refused)
    assert (await site.me()).status_code == 401
    assert [e for e in await site.events("login_refused") if e.user_id == user.id]


async def test_a_user_with_mfa_goes_on_to_the_second_factor(make_site: MakeSite) -> None:
    site = await make_site(oauth_link_verified_email=True)
    name = new_login("mfa")
    await site.harness.create_user(name, email=f"{name}@corp.example")
    await enable_mfa(site.harness, name)
    login, _ = corp_account(site, "m", email=f"{name}@corp.example")
    response = await site.sign_in("corp", login, next_="/account")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/login/mfa?next=%2Faccount"
    assert site.client.cookies.get("authdb_mfa")
    assert "authdb_session" not in response.headers.get("set-cookie", "")
    assert (await site.me()).status_code == 401
    assert await site.events("login_mfa_required")
    assert [e for e in await site.events("login_ok") if (e.detail or {}).get("provider")] == []
    # Both sides verified the address, but nothing is linked before the second factor.
    assert await site.identities() == []
    assert await site.events("oauth_linked") == []


# --- usernames ------------------------------------------------------------------------------


async def test_two_provider_accounts_with_one_handle_get_distinct_usernames(site: Site) -> None:
    first, first_email = corp_account(site, "a1", username="alice")
    second, second_email = corp_account(site, "a2", username="alice")
    assert (await site.sign_in("corp", first)).status_code == 303
    await site.sign_out()
    assert (await site.sign_in("corp", second)).status_code == 303
    users = [await site.user(first_email), await site.user(second_email)]
    assert [u.username for u in users if u] == ["alice", "alice-2"]
    # And GitHub's "alice" after them.
    gh_id = secrets.randbelow(10**9)
    site.github.add_user(
        gh_id,
        "alice",
        emails=[{"email": f"gh{gh_id}@gh.example", "primary": True, "verified": True}],
    )
    await site.sign_out()
    assert (await site.sign_in("github", str(gh_id))).status_code == 303
    assert (await site.me()).json()["username"] == "alice-3"


ODD_HANDLES = [
    "Zoë Ünïcode",
    "john smith",
    "ab",
    "🦄🦄🦄",
    "x" * 200,
    "ß" * 40,
    "..--__",
    "a\u202eb c",
    "ǆemal ﬁ",
]


async def test_odd_provider_handles_make_valid_usernames(site: Site) -> None:
    made = []
    for handle in ODD_HANDLES:
        login, email = corp_account(site, "odd", username=handle)
        response = await site.sign_in("corp", login)
        assert response.status_code == 303, (handle, response.text)
        user = await site.user(email)
        assert user is not None
        assert username_problem(user.username) is None, (handle, user.username)
        assert normalize_username(user.username) == user.username
        made.append(user.username)
    assert len(set(made)) == len(made)
    # Too short or no letters at all: the email's local part stands in.
    assert made[2].startswith("odd") and made[3].startswith("odd")
    assert len(made[4]) == USERNAME_MAX


async def test_handles_that_fold_longer_stay_valid_when_made_unique(site: Site) -> None:
    """ "ß" folds to "ss": a 32-character stem is a valid name, its "-2" must be too."""
    emails = []
    for stem in ("t1", "t2", "t3"):
        login, email = corp_account(site, stem, username="ß" * 32)
        response = await site.sign_in("corp", login)
        assert response.status_code == 303, response.text
        emails.append(email)
    names = [u.username for u in [await site.user(e) for e in emails] if u]
    assert len(set(names)) == 3
    for name in names:
        assert username_problem(name) is None, name


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=300)))
def test_username_stem_is_none_or_a_valid_username(raw: str | None) -> None:
    stem = _username_stem(raw)
    if stem is not None:
        assert username_problem(stem) is None, (raw, stem)
        assert unicodedata.normalize("NFKC", stem) == stem
        assert len(stem) <= USERNAME_MAX


# --- passwords of provider accounts ---------------------------------------------------------


async def test_a_provider_account_has_no_usable_password_until_reset(
    site: Site, mailbox: Mailbox
) -> None:
    hasher = site.harness.auth.core.hasher
    login, email = corp_account(site, "nopw")
    assert (await site.sign_in("corp", login)).status_code == 303
    await site.sign_out()
    # Constant work: the same verifications as a wrong password for an account with one.
    other = new_login("haspw")
    await site.harness.create_user(other, email=f"{other}@example.com")
    before = hasher.verifications
    wrong = await site.client.post("/token", data={"username": other, "password": "guess"})
    assert wrong.status_code == 401
    cost = hasher.verifications - before
    assert cost >= 1
    for attempt in ("guess", "", "!", PASSWORD):
        before = hasher.verifications
        token = await site.client.post("/token", data={"username": login, "password": attempt})
        assert token.status_code in (401, 422), token.text
        if token.status_code == 401:
            assert hasher.verifications - before == cost, attempt
    # Forgot password, then reset: the password works.
    forgot = await site.client.post("/password/forgot", json={"email": email})
    assert forgot.status_code == 202
    await mailbox.wait_for(1)
    reset_token = link_token(mailbox.to(email)[-1], "reset-password")
    reset = await site.client.post(
        "/password/reset", json={"token": reset_token, "password": PASSWORD}
    )
    assert reset.status_code == 204, reset.text
    assert (await site.harness.login(login, PASSWORD))["access_token"]
    # And the provider still signs in.
    assert (await site.sign_in("corp", login)).status_code == 303


# --- shared with tests/test_oauth_flows.py ---------------------------------------------------


async def link_corp(site: Site, username: str, corp_login: str) -> httpx.Response:
    """Sign ``username`` in with its password through the page, then link corp's
    ``corp_login`` from /account (confirmed with the password); the callback's response."""
    await sign_in_with_password(site, username)
    target = await post_account_form(site, "/account/oauth/corp/link", password=PASSWORD)
    assert target.status_code == 303, target.text
    callback = await site.answer_to(target.headers["location"], corp_login)
    return await site.client.get(callback)


async def sign_in_with_password(site: Site, username: str, password: str = PASSWORD) -> None:
    page = await site.client.get("/login")
    token = csrf_of(page.text)
    response = await site.client.post(
        "/login", data={"csrf_token": token, "username": username, "password": password}
    )
    assert response.status_code == 303, response.text


async def post_account_form(
    site: Site, action: str, *, csrf: bool = True, **data: str
) -> httpx.Response:
    """POST a form of /account (with the page's CSRF token unless ``csrf`` is off)."""
    page = await site.client.get("/account")
    assert page.status_code == 200, page.text
    fields = {"csrf_token": csrf_of(page.text)} if csrf else {}
    return await site.client.post(action, data={**fields, **data})


def csrf_of(page: str) -> str:
    return csrf_field(page)


# --- links by email: the same address, never a lookalike ------------------------------------


async def test_link_verified_email_needs_the_same_address_not_the_same_key(
    make_site: MakeSite,
) -> None:
    """``straße.de`` and ``strasse.de``, ``gma\u0131l.com`` (a dotless i) and ``gmail.com`` share
    a case-folded key (one of them may register), but they are different domains: the
    identity is not linked to the other's account. ASCII case alone is the same address."""
    site = await make_site(oauth_link_verified_email=True)
    for account_domain, identity_domain in [
        ("strasse.de", "straße.de"),
        ("gmail.com", "gma\u0131l.com"),
    ]:
        local = new_login("victim")
        await site.harness.create_user(local, email=f"{local}@{account_domain}")
        login, _ = corp_account(site, "look", email=f"{local}@{identity_domain}")
        response = await site.sign_in("corp", login)
        assert response.status_code == 409, (identity_domain, response.text)
        assert "already exists" in text_of(response)
        assert (await site.me()).status_code == 401
        assert site.client.cookies.get("authdb_session") is None
        assert await site.identities() == []
    assert await site.events("oauth_linked") == []
    # The same address in another ASCII case is the same mailbox: linked and signed in.
    local = new_login("victim")
    await site.harness.create_user(local, email=f"Victim{local}@Example.com")
    login, _ = corp_account(site, "case", email=f"victim{local}@example.com")
    response = await site.sign_in("corp", login)
    assert response.status_code == 303, response.text
    assert (await site.me()).json()["username"] == local
    (row,) = await site.identities()
    assert row.subject == login and row.confirmed is True
    (linked,) = await site.events("oauth_linked")
    assert linked.detail is not None and linked.detail["by"] == "verified_email"


# --- links made from an address the provider did not verify (pre-hijacking) -----------------


async def test_a_sign_up_link_is_confirmed_only_when_the_provider_verified_the_address(
    site: Site,
) -> None:
    verified, _ = corp_account(site, "ver")
    unverified, _ = corp_account(site, "unv", verified=False)
    for login in (verified, unverified):
        assert (await site.sign_in("corp", login)).status_code == 303
        await site.sign_out()
    (kept,) = await site.identities(OAuthIdentity.subject == verified)
    (doubtful,) = await site.identities(OAuthIdentity.subject == unverified)
    assert kept.confirmed is True
    assert doubtful.confirmed is False


async def test_a_later_verified_assertion_of_the_same_address_confirms_the_link(
    site: Site,
) -> None:
    """The provider had not verified the address at sign-up; once it does, the next sign-in
    confirms the link (a password reset no longer drops it). Another verified address of the
    same identity confirms nothing."""
    login, address = corp_account(site, "later", verified=False)
    assert (await site.sign_in("corp", login)).status_code == 303
    await site.sign_out()
    site.oidc.add_account(login, f"other-{address}", email_verified=True, preferred_username=login)
    assert (await site.sign_in("corp", login)).status_code == 303
    await site.sign_out()
    (row,) = await site.identities(OAuthIdentity.subject == login)
    assert row.confirmed is False
    site.oidc.add_account(login, address.upper(), email_verified=True, preferred_username=login)
    assert (await site.sign_in("corp", login)).status_code == 303
    (row,) = await site.identities(OAuthIdentity.subject == login)
    assert row.confirmed is True


async def test_a_password_reset_drops_a_link_the_provider_never_vouched_for(
    site: Site, mailbox: Mailbox
) -> None:
    """An attacker's provider account claims the victim's address, unverified, and signs up
    with it; the victim resets the password through the mailbox: the attacker's identity no
    longer opens the account."""
    victim = f"{new_login('victim')}@corp.example"
    attacker, _ = corp_account(site, "attacker", email=victim, verified=False)
    assert (await site.sign_in("corp", attacker)).status_code == 303
    (row,) = await site.identities(OAuthIdentity.subject == attacker)
    assert row.confirmed is False
    await site.sign_out()
    # The victim, with "Forgot your password?".
    forgot = await site.client.post("/password/forgot", json={"email": victim})
    assert forgot.status_code == 202
    token = await mailed_token(mailbox, victim, "reset-password")
    reset = await site.client.post("/password/reset", json={"token": token, "password": PASSWORD})
    assert reset.status_code == 204, reset.text
    assert await site.identities(OAuthIdentity.subject == attacker) == []
    user = await site.user(victim)
    assert user is not None
    (dropped,) = await site.events("oauth_unlinked")
    assert dropped.user_id == user.id
    assert dropped.detail is not None
    assert (dropped.detail["provider"], dropped.detail["by"]) == ("corp", "email_proven")
    # The attacker's identity finds an account it is not linked to.
    again = await site.sign_in("corp", attacker)
    assert again.status_code == 409, again.text
    assert "already exists" in text_of(again)
    assert (await site.me()).status_code == 401
    # The victim's password works.
    assert (await site.harness.login(victim, PASSWORD))["access_token"]


async def mailed_token(mailbox: Mailbox, address: str, kind: str, seconds: float = 10) -> str:
    """The token of the first ``kind`` link ("verify", "reset-password") mailed to
    ``address``, waiting for it until a deadline."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        for message in mailbox.to(address):
            body = message.get_body(preferencelist=("plain",))
            if body is not None and f"/{kind}?token=" in body.get_content():
                return link_token(message, kind)
        assert asyncio.get_running_loop().time() < deadline, f"no {kind} link to {address}"
        await asyncio.sleep(0.02)


async def verify_through_the_page(site: Site, token: str) -> httpx.Response:
    """Follow a verification link in ``site``'s browser: the page, then its form."""
    page = await site.client.get("/verify", params={"token": token})
    assert page.status_code == 200, page.text
    response = await site.client.post(
        "/verify", data={"csrf_token": csrf_of(page.text), "token": token}
    )
    assert response.status_code == 200, response.text
    assert "Your email address is verified." in text_of(response)
    return response


async def unverified_sign_up(site: Site, mailbox: Mailbox, stem: str) -> tuple[str, str, str]:
    """A sign-up from an address the provider did not verify, signed in in ``site``'s
    browser: (the provider login, the address, the token of the mailed verification link)."""
    login, email = corp_account(site, stem, verified=False)
    assert (await site.sign_in("corp", login)).status_code == 303
    assert (await site.me()).json()["email"] == email
    return login, email, await mailed_token(mailbox, email, "verify")


async def test_verifying_in_the_signed_in_browser_confirms_the_link(
    site: Site, mailbox: Mailbox
) -> None:
    login, email, token = await unverified_sign_up(site, mailbox, "mine")
    page = await verify_through_the_page(site, token)
    assert "Go to your account" in text_of(page)
    (row,) = await site.identities(OAuthIdentity.subject == login)
    assert row.confirmed is True
    user = await site.user(email)
    assert user is not None and user.is_verified
    assert await site.events("oauth_unlinked") == []
    # It still signs in.
    await site.sign_out()
    assert (await site.sign_in("corp", login)).status_code == 303
    assert (await site.me()).json()["email"] == email


async def test_verifying_anywhere_else_drops_the_link(site: Site, mailbox: Mailbox) -> None:
    """The link followed by a browser not signed in, one signed in to another account, or
    sent to the JSON API (even with the account's own session cookie): dropped."""
    other = new_login("other")
    await site.harness.create_user(other)
    dropped: list[tuple[str, str]] = []

    async def check_dropped(login: str, email: str) -> None:
        dropped.append((login, email))
        assert await site.identities(OAuthIdentity.subject == login) == []
        user = await site.user(email)
        assert user is not None and user.is_verified
        events = await site.events("oauth_unlinked")
        assert sorted(e.user_id for e in events if e.user_id is not None) == sorted(
            u.id for u in [await site.user(e) for _, e in dropped] if u is not None
        )
        for event in events:
            assert event.detail is not None and event.detail["by"] == "email_proven"
        await site.sign_out()
        again = await site.sign_in("corp", login)
        assert again.status_code == 409, again.text
        assert (await site.me()).status_code == 401

    # Another browser (not signed in).
    login, email, token = await unverified_sign_up(site, mailbox, "away")
    await site.sign_out()
    page = await verify_through_the_page(site, token)
    assert "Sign in" in text_of(page)
    await check_dropped(login, email)
    # A browser signed in to another account.
    login, email, token = await unverified_sign_up(site, mailbox, "elsewhere")
    await site.sign_out()
    await sign_in_with_password(site, other)
    await verify_through_the_page(site, token)
    assert (await site.me()).json()["username"] == other
    await check_dropped(login, email)
    # The JSON API, in the account's own signed-in browser.
    login, email, token = await unverified_sign_up(site, mailbox, "api")
    verified = await site.client.post("/verify", json={"token": token})
    assert verified.status_code in (200, 204), verified.text
    await check_dropped(login, email)


# --- what a provider says, checked ----------------------------------------------------------


async def test_email_verified_must_be_true_not_merely_truthy(site: Site) -> None:
    """``email_verified`` of 1 is no assertion (only ``true``, or the string "true")."""
    made = {}
    for stem, claim in [("one", 1), ("string", "true"), ("yes", "yes")]:
        login = new_login(stem)
        email = f"{login}@corp.example"
        site.oidc.add_account(login, email, email_verified=claim, preferred_username=login)  # type: ignore[arg-type]
        assert (await site.sign_in("corp", login)).status_code == 303
        await site.sign_out()
        user = await site.user(email)
        assert user is not None
        (row,) = await site.identities(OAuthIdentity.subject == login)
        made[stem] = (user.is_verified, row.confirmed)
    assert made == {"one": (False, False), "string": (True, True), "yes": (False, False)}


async def test_github_addresses_with_control_characters_are_dropped(site: Site) -> None:
    # The only address holds a NUL: as if GitHub had shared none (PostgreSQL would refuse it).
    nul_id = secrets.randbelow(10**9)
    site.github.add_user(
        nul_id,
        new_login("nul"),
        emails=[{"email": "nul\x00byte@gh.example", "primary": True, "verified": True}],
    )
    response = await site.sign_in("github", str(nul_id))
    assert response.status_code == 400, response.text
    assert "GitHub did not share your email address" in text_of(response)
    assert await site.count(User) == 0
    assert await site.identities() == []
    # A primary with an escape sequence, another verified address: that one is used.
    esc_id = secrets.randbelow(10**9)
    good = f"{new_login('good')}@gh.example"
    site.github.add_user(
        esc_id,
        new_login("esc"),
        emails=[
            {"email": "esc\x1b[31m@gh.example", "primary": True, "verified": True},
            {"email": "bidi\u202e@gh.example", "verified": True},
            {"email": good, "verified": True},
        ],
    )
    response = await site.sign_in("github", str(esc_id))
    assert response.status_code == 303, response.text
    me = (await site.me()).json()
    assert me["email"] == good and me["is_verified"] is True
    (row,) = await site.identities()
    assert row.email == good


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param(True, id="bool"),
        pytest.param(10**29, id="30-digits"),
        pytest.param("12345", id="string"),
        pytest.param(-5, id="negative"),
        pytest.param(None, id="null"),
    ],
)
async def test_a_github_user_without_a_sound_id_is_a_502_page(site: Site, user_id: Any) -> None:
    login = new_login("oddid")
    site.github.add_user(
        secrets.randbelow(10**9),
        login,
        emails=[{"email": f"{login}@gh.example", "primary": True, "verified": True}],
        user_json={"id": user_id},
    )
    response = await site.sign_in("github", login)
    assert response.status_code == 502, response.text
    assert "GitHub could not be reached" in text_of(response)
    assert (await site.me()).status_code == 401
    assert await site.count(User) == 0
    (event,) = await site.events("oauth_failed")
    assert event.detail is not None and event.detail["reason"] == "GitHub user: no numeric id"
