"""Translation of domain errors to HTTP responses, in one place."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from authdb import errors
from authdb.db.outage import is_concurrent_change, is_outage
from authdb.http import bodies

log = logging.getLogger("authdb")

CONCURRENT_CHANGE = "Changed concurrently by another request; try again"

_STATUS: dict[type[errors.AuthError], int] = {
    errors.InvalidCredentials: 401,
    errors.NotAuthenticated: 401,
    errors.InvalidRefreshToken: 401,
    errors.MFARequired: 403,
    errors.InvalidMFACode: 400,
    errors.InvalidPasskeyRegistration: 400,
    errors.PasskeysUnavailable: 409,
    errors.FeatureNotInstalled: 501,
    errors.InactiveUser: 400,
    errors.EmailNotVerified: 400,
    errors.IncorrectPassword: 400,
    errors.InvalidEmailToken: 400,
    errors.InvalidInput: 422,
    errors.Conflict: 409,
    errors.NotFound: 404,
    errors.PermissionDenied: 403,
    errors.CSRFFailed: 403,
    errors.RegistrationClosed: 403,
    errors.TooManyRequests: 429,
    errors.ServiceUnavailable: 503,
}


def status_of(exc: errors.AuthError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400


def _headers(exc: errors.AuthError, status: int) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    headers.update(retry_after(exc))
    return headers


def retry_after(exc: errors.AuthError) -> dict[str, str]:
    """``Retry-After`` for a refusal that ends (a limit, a lock, an outage); else nothing."""
    if isinstance(exc, errors.TooManyRequests | errors.ServiceUnavailable):
        return {"Retry-After": str(exc.retry_after)}
    return {}


def error_detail(exc: errors.AuthError) -> str | list[dict[str, Any]]:
    """The ``detail`` of an error's answer; invalid input gets FastAPI's list shape (422)."""
    if isinstance(exc, errors.InvalidInput):
        # A dotted field ("profile.company") is a path into the body, as FastAPI's loc is.
        loc = ["body", *exc.field.split(".")] if exc.field else ["body"]
        return [{"type": "value_error", "loc": loc, "msg": exc.detail}]
    return exc.detail


def auth_error_response(exc: errors.AuthError) -> JSONResponse:
    status = status_of(exc)
    return JSONResponse(
        {"detail": error_detail(exc)}, status_code=status, headers=_headers(exc, status)
    )


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, minus the echoed input: it may be a password or a token."""
    detail = [
        {key: value for key, value in error.items() if key not in ("input", "ctx", "url")}
        for error in exc.errors()
    ]
    return JSONResponse(
        {"detail": jsonable_encoder(detail)},
        status_code=422,
        headers={"Cache-Control": "no-store"},
    )


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc)


def to_http_exception(exc: errors.AuthError) -> HTTPException:
    """For dependencies that run inside an application's own routes."""
    status = status_of(exc)
    return HTTPException(status, error_detail(exc), headers=_headers(exc, status))


class AuthRoute(APIRoute):
    """A route that answers domain errors itself, so a host app needs no extra handlers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        json_body = bodies.reads_json(self)

        async def route_handler(request: Request) -> Response:
            try:
                if json_body:
                    await bodies.check_json_body(request)
                response = await handler(request)
            except errors.AuthError as exc:
                return auth_error_response(exc)
            except RequestValidationError as exc:
                return validation_error_response(exc)
            except StarletteHTTPException as exc:
                # The framework's 400 for a body it could not read is a 422 here.
                unreadable = bodies.unreadable_body(exc)
                if unreadable is None:
                    raise
                return validation_error_response(unreadable)
            except Exception as exc:
                known = database_failure(exc)
                if known is None:
                    raise
                return auth_error_response(known)
            # Every authdb answer carries tokens or user data: none may sit in a cache.
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return route_handler


async def _on_auth_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.AuthError)
    return auth_error_response(exc)


def _log_outage(exc: BaseException) -> None:
    # One line, not a traceback: during an outage every request fails the same way.
    first_line = next(iter(str(exc).splitlines()), "")
    log.warning("database unavailable: %s: %s", type(exc).__name__, first_line[:300])


def database_failure(exc: BaseException) -> errors.AuthError | None:
    """What a database exception means for the client, if it is not a bug: a concurrent
    change (409, retry) or an outage (503, logged once); None for anything else."""
    if is_concurrent_change(exc):
        return errors.Conflict(CONCURRENT_CHANGE)
    if is_outage(exc):
        _log_outage(exc)
        return errors.ServiceUnavailable()
    return None


def outage_http_exception(exc: BaseException) -> HTTPException:
    """503 ``Service unavailable`` with ``Retry-After``, as an exception for dependencies that
    run inside an application's own routes."""
    _log_outage(exc)
    return to_http_exception(errors.ServiceUnavailable())


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    known = database_failure(exc)  # a route of the host app that used authdb's database
    if known is not None:
        return auth_error_response(known)
    # Logged for operators; the client learns nothing about the internals.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal server error"}, status_code=500)


# For an application's own routes (``Auth.exception_handlers``): authdb's errors raised there,
# e.g. by ``auth.users``, answer as in authdb's routes; everything else stays the app's.
APP_EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    errors.AuthError: _on_auth_error,
}


def install_error_handlers(app: FastAPI) -> None:
    """Register authdb's handlers on an application (the service's or a user's own)."""
    app.add_exception_handler(errors.AuthError, _on_auth_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
