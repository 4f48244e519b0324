"""Route classes for pages: errors become HTML pages, and form posts share paths with the API.

``/register``, ``/verify`` and ``/logout`` are both API endpoints (JSON or a bearer token) and
page forms. A form-only page route matches those paths fully only for a form body
(``application/x-www-form-urlencoded`` or ``multipart/form-data``) without ``Authorization``;
for anything else it steps aside (a partial match), so the API route of the same path answers
as it always did.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from authdb import errors
from authdb.http.errors import database_failure, retry_after, status_of
from authdb.http.pages.render import FormRefused, Pages
from authdb.http.shared_paths import is_page_form

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def route_classes(pages: Pages) -> tuple[type[APIRoute], type[APIRoute]]:
    """(page route, form-only page route) classes bound to ``pages`` for their error pages.

    Classes, not instances: FastAPI's ``include_router`` re-creates routes by their class.
    """

    class PageRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def route_handler(request: Request) -> Response:
                try:
                    return await handler(request)
                except errors.AuthError as exc:
                    return _error_page(pages, request, exc)
                except Exception as exc:
                    known = database_failure(exc)
                    if known is None:
                        raise
                    return _error_page(pages, request, known)

            return route_handler

    class FormOnlyPageRoute(PageRoute):
        def matches(self, scope: Scope) -> tuple[Match, Scope]:
            match, child = super().matches(scope)
            if match is Match.FULL and scope.get("method") == "POST" and not is_page_form(scope):
                return Match.PARTIAL, child
            return match, child

    return PageRoute, FormOnlyPageRoute


def _error_page(pages: Pages, request: Request, exc: errors.AuthError) -> Response:
    if isinstance(exc, FormRefused):
        return pages.refused(request, pages.state(request), exc.back or str(request.url.path))
    return pages.render(
        request,
        pages.state(request),
        "error",
        title="Something went wrong",
        status=status_of(exc),
        headers=retry_after(exc),
        error=exc.detail,
        link={"href": pages.url(request, "login"), "text": "Back to sign in"},
    )
