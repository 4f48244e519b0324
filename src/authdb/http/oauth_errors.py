"""OAuth 2.0 error fields (RFC 6749 §5.2) on every error answer of the token endpoint.

Standard clients (Authlib, requests-oauthlib, ...) recognise a failed token request by its
``error`` member; given only ``{"detail": ...}`` they take the body for a token. ``TokenRoute``
adds ``error`` and ``error_description`` beside ``detail`` and keeps the status, headers and
``detail`` that authdb's other routes would give.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from authdb.http.errors import AuthRoute

log = logging.getLogger("authdb")

# What each status of /token means in OAuth terms: 400 (inactive or unverified user), 401
# (wrong credentials, bad or reused refresh token) and 429 (locked or rate-limited) all say
# "this grant will not do"; 422 is a missing or malformed field.
_ERROR_BY_STATUS = {
    400: "invalid_grant",
    401: "invalid_grant",
    429: "invalid_grant",
    422: "invalid_request",
    503: "temporarily_unavailable",
    500: "server_error",
}

# RFC 6749 §5.2 allows only these characters in error_description.
_NOT_ALLOWED = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


class OAuthError(HTTPException):
    """A token-endpoint error whose OAuth code its status alone does not tell.

    ``OAuthError(400, "unsupported_grant_type", "Unsupported grant_type ...")``; ``extra``
    members (an ``mfa_token``, say) go into the body too.
    """

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status_code, detail, headers)
        self.error = error
        self.extra = extra or {}


class TokenRoute(AuthRoute):
    """``AuthRoute`` whose error answers also carry RFC 6749 ``error`` and ``error_description``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except OAuthError as exc:
                body = {"detail": exc.detail, **exc.extra}
                return _oauth_response(exc.status_code, body, exc.error, exc.headers)
            except StarletteHTTPException as exc:  # the framework's own, FastAPI's subclass too
                error = _error_for(exc.status_code)
                return _oauth_response(exc.status_code, {"detail": exc.detail}, error, exc.headers)
            except Exception:
                # Still a bug to fix, but the client gets an OAuth answer, not a bare 500.
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                body = {"detail": "Internal server error"}
                return _oauth_response(500, body, "server_error", None)
            if response.status_code < 400:
                return response
            return _with_oauth_fields(response)

        return route_handler


def _error_for(status: int) -> str:
    return _ERROR_BY_STATUS.get(status, "invalid_request")


def _with_oauth_fields(response: Response) -> Response:
    """The same error answer with ``error`` and ``error_description`` added to its body."""
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        return response  # not one of ours: leave it be
    if not isinstance(body, dict):
        return response
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in ("content-length", "content-type")
    }
    return _oauth_response(response.status_code, body, _error_for(response.status_code), headers)


def _oauth_response(
    status: int, body: dict[str, Any], error: str, headers: Mapping[str, str] | None
) -> JSONResponse:
    described = {"error": error, "error_description": _description(body.get("detail"))}
    merged = {name.lower(): value for name, value in (headers or {}).items()}
    merged.setdefault("cache-control", "no-store")  # RFC 6749 §5.2 asks for it too
    return JSONResponse({**body, **described}, status_code=status, headers=merged)


def _description(detail: Any) -> str:
    """``detail`` as one line of the characters §5.2 allows (a 422's list is summarised)."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc") or []
                field = str(loc[-1]) if loc else ""
                message = str(item.get("msg", ""))
                parts.append(f"{field}: {message}" if field else message)
        text = "; ".join(parts) or "Invalid request"
    else:
        text = str(detail) if detail is not None else "Request failed"
    return _NOT_ALLOWED.sub("?", text.replace('"', "'"))[:500]
