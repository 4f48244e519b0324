"""Sign-in with another provider, end to end over HTTP (no browser): a real OpenID Connect
provider (oidc-provider, Node) and a GitHub stand-in, on both databases.

The browser side (buttons, cookies in Chromium, the account page) is tests/test_oauth_browser.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from authdb.db.models import AuditEvent, OAuthIdentity, User
from tests.conftest import PASSWORD, Harness
from tests.github_standin import GitHubStandin
from tests.oauth_servers import OIDCProvider, follow_to_callback

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

    async def provider_answer(self, provider: str, login: str, *, deny: bool = False) -> str:
        """Play the user at the provider; the callback URL (path and query) it sends back."""
        target = await self.start(provider)
        async with httpx.AsyncClient(trust_env=False, timeout=15) as browser:
            url = await follow_to_callback(browser, target, login, deny=deny)
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
        return f"{parts.path}?{parts.query}"

    async def sign_in(self, provider: str, login: str) -> httpx.Response:
        return await self.client.get(await self.provider_answer(provider, login))

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


@pytest.fixture
async def make_site(
    make_harness: Callable[..., Awaitable[Harness]],
    oidc_provider: OIDCProvider,
    github_standin: GitHubStandin,
) -> Callable[..., Awaitable[Site]]:
    async def make(**overrides: Any) -> Site:
        corp_id, corp_secret = oidc_provider.register_client([f"{PUBLIC_URL}/oauth/corp/callback"])
        gh_id, gh_secret = github_standin.add_client([f"{PUBLIC_URL}/oauth/github/callback"])
        settings: dict[str, Any] = {
            "public_url": PUBLIC_URL,
            "oauth_providers": "corp,github",
            "oauth_corp_client_id": corp_id,
            "oauth_corp_client_secret": corp_secret,
            "oauth_corp_issuer": oidc_provider.issuer,
            "oauth_github_client_id": gh_id,
            "oauth_github_client_secret": gh_secret,
            "oauth_github_github_url": github_standin.base_url,
            "oauth_github_api_url": github_standin.api_url,
            **overrides,
        }
        return Site(await make_harness(**settings), oidc_provider, github_standin)

    return make


@pytest.fixture
async def site(make_site: Callable[..., Awaitable[Site]]) -> Site:
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
