"""The pages router: ``auth.pages_router``, and the service's when ``AUTHDB_PAGES_ENABLED``."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from authdb.features import Features
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.pages import account, oauth, signin, signin_mfa, signin_passkey
from authdb.http.pages.render import Pages
from authdb.http.pages.routing import route_classes

_STATIC = files("authdb").joinpath("static/pages")


def build(deps: AuthDeps, features: Features | None = None) -> APIRouter:
    """The hosted pages, included before or after the API router: on ``/register``,
    ``/verify`` and ``/logout`` each side steps aside for the other's requests (form posts are
    the pages', JSON and bearer requests the API's; see authdb.http.shared_paths).

    ``features`` leaves out the register page (``register``), the MFA and passkey sections of
    ``/account`` (``mfa``, ``passkeys``), the passkey sign-in, and sign-in with other providers
    (``oauth``; also off while AUTHDB_OAUTH_PROVIDERS is empty); ``/login/mfa`` stays, since
    accounts with MFA on still need it to sign in."""
    features = features or Features()
    pages = Pages(deps.core.settings, lambda: deps.csrf, mail_logged=deps.mailer.logs_instead)
    page_route, form_only_route = route_classes(pages)
    router = APIRouter(route_class=page_route, include_in_schema=False)
    form_router = APIRouter(route_class=form_only_route, include_in_schema=False)
    signin.add_routes(router, form_router, deps, pages, register=features.register)
    signin_mfa.add_routes(router, deps, pages)
    providers = None
    if features.oauth and deps.core.settings.oauth_providers:
        providers = oauth.OAuthPages(deps, pages)
        pages.sign_in_with = providers.buttons
        oauth.add_routes(router, deps, providers)
    account.add_routes(
        router,
        deps,
        pages,
        with_mfa=features.mfa,
        with_passkeys=features.passkeys,
        oauth=providers,
    )
    # The script's JSON endpoints answer JSON errors, not error pages.
    script_router = APIRouter(route_class=AuthRoute, include_in_schema=False)
    _asset(router, "authdb.css", "text/css", "authdb_page_css")
    if features.passkeys:
        signin_passkey.add_routes(script_router, deps, pages)
        _asset(router, "authdb-passkeys.js", "text/javascript", "authdb_page_passkeys_js")
    router.include_router(form_router)
    router.include_router(script_router)
    return router


def _asset(router: APIRouter, name: str, media_type: str, route_name: str) -> None:
    body = _STATIC.joinpath(name).read_bytes()

    @router.get(f"/assets/{name}", name=route_name)
    async def asset() -> Response:
        # The same bytes for every deployment: caches may keep them for an hour.
        return Response(
            body,
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=3600"},
        )
