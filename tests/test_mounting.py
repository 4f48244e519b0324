"""Mounting authdb in an application of one's own: any prefix (the OpenAPI token URL, emailed
links and pages follow it), features left out (404 and absent from OpenAPI), and the lifespan
helper for an app with a lifespan of its own. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db.models import Passkey
from authdb.services import mfa, provisioning
from authdb.services.core import CLI_CLIENT
from tests.conftest import PASSWORD, Mailbox

PUBLIC_URL = "http://auth.example.test"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
LINK = re.compile(r"https?://[^\s\"<>]+\?token=[A-Za-z0-9_\-]+")


@dataclass
class Mounted:
    auth: Auth
    app: FastAPI
    client: httpx.AsyncClient

    async def schema(self) -> dict[str, Any]:
        response = await self.client.get("/openapi.json")
        assert response.status_code == 200
        return dict(response.json())

    async def token_url(self) -> str:
        schemes = (await self.schema())["components"]["securitySchemes"]
        return str(schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"])


MountApp = Callable[..., Any]


@pytest.fixture
async def mount(make_settings: Callable[..., Settings]) -> AsyncIterator[MountApp]:
    """``await mount(api="/auth", pages="/auth", features=..., **settings)``: an app of one's
    own with ``auth.router`` (and ``auth.pages_router`` unless ``pages=None``) included under
    those prefixes, started by ``auth.lifespan``; a route ``/mine`` of its own."""
    async with AsyncExitStack() as stack:

        async def _mount(
            *,
            api: str = "/auth",
            pages: str | None = "/auth",
            features: Mapping[str, bool] | None = None,
            root_path: str = "",
            **overrides: Any,
        ) -> Mounted:
            auth = Auth(
                make_settings(**{"public_url": PUBLIC_URL, **overrides}),
                auto_migrate=True,
                features=features,
            )
            app = FastAPI(lifespan=auth.lifespan)
            if pages is not None:
                app.include_router(auth.pages_router, prefix=pages)
            app.include_router(auth.router, prefix=api)

            @app.get("/mine")
            async def mine() -> dict[str, str]:
                return {"ok": "yes"}

            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app, root_path=root_path)
            client = httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL)
            await stack.enter_async_context(client)
            return Mounted(auth, app, client)

        yield _mount


async def _user(auth: Auth, username: str = "alice", **fields: Any) -> Any:
    fields.setdefault("is_verified", True)
    return await provisioning.create_user(
        auth.core,
        username=username,
        email=f"{username}@example.com",
        password=PASSWORD,
        client=CLI_CLIENT,
        **fields,
    )


def _links(message: Any) -> list[str]:
    body = message.get_body(("plain",))
    return LINK.findall(body.get_content())


def _paths(schema: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, ops in schema["paths"].items() for method in ops}


# --- the prefix ---------------------------------------------------------------------------------


async def test_under_a_prefix_the_token_url_and_every_route_follow_it(mount: MountApp) -> None:
    m: Mounted = await mount(api="/auth", pages="/auth")
    assert await m.token_url() == "/auth/token"
    assert ("/auth/token", "post") in _paths(await m.schema())
    registered = await m.client.post(
        "/auth/register",
        json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
    )
    assert registered.status_code == 201, registered.text
    assert (await m.client.post("/register", json={})).status_code == 404
    token = await m.client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = await m.client.get("/auth/users/me", headers=headers)
    assert me.status_code == 200 and me.json()["username"] == "alice"
    assert (await m.client.get("/mine")).json() == {"ok": "yes"}


async def test_emailed_links_open_the_pages_where_the_app_mounted_them(
    mount: MountApp, mailbox: Mailbox
) -> None:
    m: Mounted = await mount(api="/api/auth", pages="/auth")
    assert await m.token_url() == "/api/auth/token"
    registered = await m.client.post(
        "/api/auth/register",
        json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
    )
    assert registered.status_code == 201, registered.text
    [verify] = _links((await mailbox.wait_for(1))[0])
    assert verify.startswith(f"{PUBLIC_URL}/auth/verify?token=")
    page = await m.client.get(verify.removeprefix(PUBLIC_URL))
    assert page.status_code == 200
    # The page's form posts under the pages' prefix, and that post verifies the address.
    assert 'action="/auth/verify"' in page.text
    token = verify.partition("token=")[2]
    verified = await m.client.post("/api/auth/verify", json={"token": token})
    assert verified.status_code == 200 and verified.json()["is_verified"] is True

    forgot = await m.client.post("/api/auth/password/forgot", json={"email": "alice@example.com"})
    assert forgot.status_code == 202
    [reset] = _links((await mailbox.wait_for(2))[1])
    assert reset.startswith(f"{PUBLIC_URL}/auth/reset-password?token=")
    assert (await m.client.get(reset.removeprefix(PUBLIC_URL))).status_code == 200


async def test_without_pages_links_name_the_api_prefix(mount: MountApp, mailbox: Mailbox) -> None:
    m: Mounted = await mount(api="/auth", pages=None)
    await m.client.post(
        "/auth/register",
        json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
    )
    [verify] = _links((await mailbox.wait_for(1))[0])
    assert verify.startswith(f"{PUBLIC_URL}/auth/verify?token=")


async def test_new_device_alerts_link_to_the_mounted_account_page(
    mount: MountApp, mailbox: Mailbox
) -> None:
    m: Mounted = await mount(api="/auth", pages="/people", new_device_alerts=True)
    await _user(m.auth)
    for agent in (FIREFOX, IPHONE):  # the first sign-in is the baseline; the second is new
        signed_in = await m.client.post(
            "/auth/token",
            data={"username": "alice", "password": PASSWORD},
            headers={"User-Agent": agent},
        )
        assert signed_in.status_code == 200
    [alert] = await mailbox.wait_for(1)
    text = alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f"{PUBLIC_URL}/people/account" in text


async def test_the_root_path_in_public_url_goes_in_front(mount: MountApp, mailbox: Mailbox) -> None:
    # A proxy serves the app at /api and strips it (uvicorn --root-path /api).
    m: Mounted = await mount(
        api="/auth", pages="/auth", root_path="/api", public_url=f"{PUBLIC_URL}/api"
    )
    schema = await m.schema()
    assert schema["servers"] == [{"url": "/api"}]
    assert await m.token_url() == "/api/auth/token"
    token = await m.client.post("/api/auth/token", data={"username": "x", "password": "y"})
    assert token.status_code == 401  # the endpoint the URL names answers
    await m.client.post(
        "/api/auth/register",
        json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
    )
    [verify] = _links((await mailbox.wait_for(1))[0])
    assert verify.startswith(f"{PUBLIC_URL}/api/auth/verify?token=")
    login = await m.client.get("/api/auth/login")
    assert 'action="/api/auth/login"' in login.text


async def test_without_a_prefix_the_token_url_is_the_root_one(mount: MountApp) -> None:
    m: Mounted = await mount(api="", pages="")
    assert await m.token_url() == "/token"


async def test_the_service_names_its_own_token_url(
    make_settings: Callable[..., Settings],
) -> None:
    auth = Auth(make_settings(public_url=f"{PUBLIC_URL}/sso"), auto_migrate=True)
    app = create_app(auth=auth)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path="/sso")
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            schema = (await client.get("/sso/openapi.json")).json()
    flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == "/sso/token"


# --- features -----------------------------------------------------------------------------------

ALL_OFF = {"register": False, "admin": False, "mfa": False, "passkeys": False}


async def test_features_left_out_are_404_and_absent_from_openapi(mount: MountApp) -> None:
    m: Mounted = await mount(features={**ALL_OFF, "pages": False})
    alice = await _user(m.auth, is_superuser=True)
    headers = {"Authorization": f"Bearer {(await _token(m)).json()['access_token']}"}
    gone = [
        ("POST", "/auth/register", {"username": "bob", "email": "b@example.com"}),
        ("GET", "/auth/users", None),
        ("GET", f"/auth/users/{alice.id}", None),
        ("DELETE", f"/auth/users/{alice.id}/mfa", None),
        ("POST", "/auth/users/me/mfa/totp/setup", {"password": PASSWORD}),
        ("POST", "/auth/users/me/mfa/recovery-codes", {"password": PASSWORD}),
        ("DELETE", "/auth/users/me/mfa", None),
        ("GET", "/auth/users/me/passkeys", None),
        ("POST", "/auth/users/me/passkeys/options", {"password": PASSWORD}),
        ("POST", "/auth/passkeys/login/options", {}),
        ("GET", "/auth/login", None),
        ("GET", "/auth/register", None),
        ("GET", "/auth/account", None),
    ]
    for method, path, body in gone:
        response = await m.client.request(method, path, json=body, headers=headers)
        assert response.status_code in (404, 405), (method, path, response.status_code)
        if response.status_code == 405:  # the path lives on for another method only
            assert method not in response.headers["allow"], (method, path)
    paths = _paths(await m.schema())
    assert not {p for p, _ in paths if "mfa" in p or "passkeys" in p}, paths
    assert ("/auth/register", "post") not in paths
    assert not {p for p, _ in paths if p.startswith("/auth/users/{")}, paths
    assert ("/auth/users", "get") not in paths
    # The rest keeps working.
    kept = {
        ("/auth/token", "post"),
        ("/auth/users/me", "get"),
        ("/auth/users/me", "patch"),
        ("/auth/verify", "post"),
        ("/auth/password/forgot", "post"),
        ("/auth/users/me/sessions", "get"),
    }
    assert kept <= paths, kept - paths
    me = await m.client.get("/auth/users/me", headers=headers)
    assert me.status_code == 200 and me.json()["username"] == "alice"
    assert m.auth.pages_router.routes == []


async def test_each_feature_leaves_out_only_its_own_part(mount: MountApp) -> None:
    m: Mounted = await mount(features={"admin": False})
    paths = _paths(await m.schema())
    assert ("/auth/register", "post") in paths
    assert ("/auth/users/me/mfa/totp/setup", "post") in paths
    assert ("/auth/users/me/passkeys", "get") in paths
    assert ("/auth/users", "get") not in paths
    assert (await m.client.get("/auth/register")).status_code == 200


async def test_with_mfa_left_out_an_account_with_mfa_on_still_needs_its_second_factor(
    mount: MountApp,
) -> None:
    m: Mounted = await mount(features={"mfa": False})
    alice = await _user(m.auth)
    setup = await mfa.begin_setup(m.auth.core, m.auth.limits, alice, PASSWORD, CLI_CLIENT)
    code = pyotp.TOTP(setup.secret).at(m.auth.core.clock())
    await mfa.confirm_setup(m.auth.core, m.auth.limits, alice, code, CLI_CLIENT)
    step = await _token(m)
    assert step.status_code == 403, step.text
    assert step.json()["detail"] == "MFA required" and step.json()["mfa_token"]
    # The page sign-in still goes on to the second step, which is still there.
    login = await m.client.get("/auth/login")
    form = {"username": "alice", "password": PASSWORD, **_csrf(login.text)}
    posted = await m.client.post("/auth/login", data=form)
    assert posted.status_code == 303
    assert posted.headers["location"].startswith("/auth/login/mfa")
    assert (await m.client.get(posted.headers["location"])).status_code == 200


@pytest.mark.parametrize("passkeys", [True, False])
async def test_the_second_factor_offers_a_passkey_only_where_passkeys_are_mounted(
    mount: MountApp, passkeys: bool
) -> None:
    """An MFA account that owns a passkey: the MFA step lists ``webauthn`` only when the app
    mounts passkeys (with them left out, no route could complete that method)."""
    m: Mounted = await mount(features={"passkeys": passkeys})
    alice = await _user(m.auth)
    setup = await mfa.begin_setup(m.auth.core, m.auth.limits, alice, PASSWORD, CLI_CLIENT)
    code = pyotp.TOTP(setup.secret).at(m.auth.core.clock())
    await mfa.confirm_setup(m.auth.core, m.auth.limits, alice, code, CLI_CLIENT)
    async with m.auth.core.sessionmaker() as db:
        db.add(
            Passkey(
                user_id=alice.id,
                credential_id=b"credential",
                user_handle=b"handle",
                public_key=b"key",
                name="laptop",
            )
        )
        await db.commit()
    step = await _token(m)
    assert step.status_code == 403, step.text
    expected = ["totp", "recovery_code", *(["webauthn"] if passkeys else [])]
    assert step.json()["mfa_methods"] == expected


async def test_pages_without_their_features_leave_those_sections_out(mount: MountApp) -> None:
    m: Mounted = await mount(features=ALL_OFF)
    await _user(m.auth)
    login = await m.client.get("/auth/login")
    assert login.status_code == 200
    assert "/auth/register" not in login.text and "Create an account" not in login.text
    assert "passkey" not in login.text.lower()
    assert (await m.client.get("/auth/register")).status_code == 404
    form = {"username": "alice", "password": PASSWORD, **_csrf(login.text)}
    signed_in = await m.client.post("/auth/login", data=form)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/auth/account"
    account = await m.client.get("/auth/account")
    assert account.status_code == 200
    assert 'id="mfa-heading"' not in account.text
    assert 'id="passkeys-heading"' not in account.text
    assert 'id="sessions-heading"' in account.text
    setup = await m.client.post("/auth/account/mfa/setup", data={"password": PASSWORD})
    assert setup.status_code == 404


async def test_the_service_leaves_out_the_same_parts(
    make_settings: Callable[..., Settings],
) -> None:
    auth = Auth(make_settings(), auto_migrate=True, features={"pages": False, "admin": False})
    app = create_app(auth=auth)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            assert (await client.get("/login")).status_code == 404
            assert (await client.get("/")).status_code == 404
            schema = (await client.get("/openapi.json")).json()
    assert "/users" not in schema["paths"]
    assert not [r for r in app.routes if isinstance(r, APIRoute) and r.path == "/users"]


# --- the lifespan helper ------------------------------------------------------------------------


async def test_lifespan_with_runs_the_apps_lifespan_inside_authdbs(
    make_settings: Callable[..., Settings],
) -> None:
    auth = Auth(make_settings(public_url=PUBLIC_URL), auto_migrate=True)
    seen: list[str] = []

    @asynccontextmanager
    async def my_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # authdb is up already: the app can use its services at start-up.
        admin = await auth.users.create(
            username="admin", email="admin@example.com", password=PASSWORD
        )
        seen.append("app started")
        yield {"greeting": f"hello {admin.username}"}
        # ... and still up while the app shuts down.
        assert (await auth.users.get(admin.id)).username == "admin"
        seen.append("app stopped")

    app = FastAPI(lifespan=auth.lifespan_with(my_lifespan))
    app.include_router(auth.router, prefix="/auth")

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    async with app.router.lifespan_context(app) as state:
        seen.append("serving")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            assert state == {"greeting": "hello admin"}
            token = await client.post(
                "/auth/token", data={"username": "admin", "password": PASSWORD}
            )
            assert token.status_code == 200
            doc = (await client.get("/openapi.json")).json()
    flows = doc["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == "/auth/token"
    assert seen == ["app started", "serving", "app stopped"]
    # authdb has stopped: its engine is disposed and its key ring gone.
    assert auth.core.keyring is None


async def test_lifespan_with_an_app_lifespan_that_yields_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    auth = Auth(make_settings(), auto_migrate=True)

    @asynccontextmanager
    async def quiet(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(lifespan=auth.lifespan_with(quiet))
    async with app.router.lifespan_context(app) as state:
        assert state is None
        assert auth.core.keyring is not None


def test_unknown_features_are_refused_by_name(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="'registration'"):
        Auth(make_settings(), features={"registration": False})


async def _token(m: Mounted) -> httpx.Response:
    return await m.client.post("/auth/token", data={"username": "alice", "password": PASSWORD})


def _csrf(html: str) -> dict[str, str]:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return {"csrf_token": found.group(1)}


@pytest.mark.parametrize("name", ["auth", None])
async def test_a_mounted_sub_app_named_or_not_is_followed(
    make_settings: Callable[..., Settings], name: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """``app.mount("/auth", sub, name="auth")``: Starlette reaches routes inside a named
    mount only as ``auth:route``; the token URL and links follow it all the same."""
    auth = Auth(make_settings(public_url=PUBLIC_URL), auto_migrate=True)
    sub = FastAPI()
    sub.include_router(auth.pages_router)
    sub.include_router(auth.router)
    app = FastAPI(lifespan=auth.lifespan)
    app.mount("/auth", sub, name=name)
    async with app.router.lifespan_context(app):
        assert auth.core.links.token == "/auth/token"
        assert auth.core.links.verify == "/auth/verify"
        assert auth.core.links.reset == "/auth/reset-password"
        schemes = sub.openapi()["components"]["securitySchemes"]
        [scheme] = schemes.values()
        assert scheme["flows"]["password"]["tokenUrl"] == "/auth/token"
    assert "not found in the app" not in caplog.text


async def test_routes_authdb_cannot_find_are_named_in_a_warning(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a mount that is no Starlette app, the routes cannot be found: a warning says
    the standalone paths stay, instead of links silently pointing elsewhere."""
    auth = Auth(make_settings(public_url=PUBLIC_URL), auto_migrate=True)
    sub = FastAPI()
    sub.include_router(auth.router)

    async def opaque(scope: Any, receive: Any, send: Any) -> None:
        await sub(scope, receive, send)

    app = FastAPI(lifespan=auth.lifespan)
    app.mount("/auth", opaque)
    with caplog.at_level(logging.WARNING, logger="authdb"):
        async with app.router.lifespan_context(app):
            assert auth.core.links.token == "/token"
    assert "token route is not found in the app" in caplog.text
