"""``OPTIONS`` and 405 answers that name every method of a path.

Starlette answers a method that a path lacks with 405 and the methods of the one route it
tried: ``/users/me`` has ``GET``, ``PATCH`` and ``DELETE`` on three routes, yet ``PUT`` was
told ``Allow: GET``. Here every route of the application is asked, and ``OPTIONS`` (which no
route declares) answers 204 with the same ``Allow``. Only a 405 pays for this.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Mount
from starlette.types import Scope

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods some route of ``app`` answers at the request's path."""
    allowed = []
    for method in _METHODS:
        probe: Scope = {
            "type": "http",
            "method": method,
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
            "headers": scope.get("headers", []),
            "query_string": b"",
        }
        # A mount takes any method (its app decides); its own 405 says what it allows.
        routes = (route for route in app.router.routes if not isinstance(route, Mount))
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 with the path's full ``Allow``; for ``OPTIONS``, 204 with it."""
    methods = allowed_methods(request.app, request.scope)
    if not methods and isinstance(exc, HTTPException) and exc.headers:
        methods = [m.strip() for m in exc.headers.get("Allow", "").split(",") if m.strip()]
    allow = ", ".join(dict.fromkeys([*methods, "OPTIONS"]))
    if request.method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": allow})
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})


def install(app: FastAPI) -> None:
    """Answer every 405 of ``app`` (and so every ``OPTIONS``) with the path's full ``Allow``."""
    app.add_exception_handler(405, method_not_allowed)
