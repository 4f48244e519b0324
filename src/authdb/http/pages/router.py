"""The pages router: ``auth.pages_router``, and the service's when ``AUTHDB_PAGES_ENABLED``."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from authdb.http.dependencies import AuthDeps
from authdb.http.pages import account, signin, signin_mfa
from authdb.http.pages.render import Pages
from authdb.http.pages.routing import route_classes

_CSS = files("authdb").joinpath("static/pages/authdb.css")


def build(deps: AuthDeps) -> APIRouter:
    """The hosted pages. Include it before the API router: its form posts to ``/register``,
    ``/verify`` and ``/logout`` step aside for JSON and bearer requests to the same paths."""
    pages = Pages(deps.core.settings, lambda: deps.csrf)
    page_route, form_only_route = route_classes(pages)
    router = APIRouter(route_class=page_route, include_in_schema=False)
    form_router = APIRouter(route_class=form_only_route, include_in_schema=False)
    signin.add_routes(router, form_router, deps, pages)
    signin_mfa.add_routes(router, deps, pages)
    account.add_routes(router, deps, pages)
    stylesheet = _CSS.read_bytes()

    @router.get("/assets/authdb.css", name="authdb_page_css")
    async def css() -> Response:
        # The same bytes for every deployment: caches may keep it for an hour.
        return Response(
            stylesheet,
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    router.include_router(form_router)
    return router
