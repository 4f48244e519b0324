"""Request and response hardening for the standalone service: security headers, header and body
limits, CORS.

All of it is pure ASGI: ``BaseHTTPMiddleware`` would buffer and could not count the bytes
of a chunked body while it streams in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authdb.settings import Settings

SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    # Links in an auth app's pages may carry tokens in their query; never leak them onward.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# No Content-Security-Policy here: JSON needs none, and the pages that do (/docs, /redoc) send
# their own, see authdb.http.routers.docs.

# Everything here is a token, a user, an error about one, or cheap to fetch again: by
# default nothing may be stored by a browser or a shared cache.
DEFAULT_CACHE_CONTROL = "no-store"

TOO_LARGE = {"detail": "Request body too large"}

# The request line aside, everything a client sends before the body: names and values summed.
# Real clients send 1-4 KiB; 16 KiB leaves room for big cookies and still stops a header
# crafted to make a parser (or a JWT decoder) work.
MAX_HEADER_BYTES = 16 * 1024
HEADERS_TOO_LARGE = {"detail": "Request headers too large"}


class HeaderLimitMiddleware:
    """Answers 431 when the request's headers add up to more than ``max_bytes``.

    It only sums lengths of the server's already split ``scope["headers"]``: no header is
    decoded, so an oversized ``Authorization`` costs one pass over a list, not a JWT parse.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_bytes:
                await _refuse(scope, receive, send, HEADERS_TOO_LARGE, 431)
                return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Adds the security headers, and ``Cache-Control: no-store`` unless a route chose one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_hardened(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = _with_defaults(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_hardened)
        except Exception:
            # Starlette's outermost error middleware answers unhandled errors with the
            # server's raw ``send``, which would bypass the headers. Answer here instead,
            # with the same body, and re-raise: that middleware still logs the error.
            if not started:
                response = JSONResponse({"detail": "Internal server error"}, status_code=500)
                await response(scope, receive, send_hardened)
            raise


# The headers every response gets unless a route set its own, as raw (lower-case) ASGI pairs.
_DEFAULT_HEADERS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in {**SECURITY_HEADERS, "Cache-Control": DEFAULT_CACHE_CONTROL}.items()
)


def _with_defaults(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``raw`` response headers plus each default header they lack (one pass, no parsing)."""
    headers = list(raw)
    present = {name.lower() for name, _ in headers}
    headers.extend(pair for pair in _DEFAULT_HEADERS if pair[0] not in present)
    return headers


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a request body has passed the limit."""


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, counted while they stream in.

    A declared ``Content-Length`` over the limit is refused before anything is read. A body
    without one (chunked) is counted chunk by chunk; when it passes the limit, ``receive``
    raises, and whatever the application makes of that is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        framing = dict(_body_framing(scope))
        if not framing:  # neither Content-Length nor Transfer-Encoding: no body (RFC 9112 6.3)
            await self.app(scope, receive, send)
            return
        declared = framing.get(b"content-length", b"").decode("latin-1")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # The application turned the error into a response of its own (FastAPI
                # answers 400 for a body it could not read); the client gets the 413.
                raise _BodyTooLarge
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if started:
                raise
            await _too_large(scope, receive, send)
        except Exception:
            if exceeded and not started:
                await _too_large(scope, receive, send)
                return
            raise


def _body_framing(scope: Scope) -> Iterator[tuple[bytes, bytes]]:
    """The request's Content-Length and Transfer-Encoding headers, as raw pairs."""
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            yield lowered, value


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    await _refuse(scope, receive, send, TOO_LARGE, 413)


# The service's token endpoint: its errors speak OAuth 2.0 too (RFC 6749 5.2), even these.
TOKEN_PATH = "/token"


async def _refuse(
    scope: Scope, receive: Receive, send: Send, body: dict[str, str], status: int
) -> None:
    """Answer ``body`` and close the connection, which stops a client still sending."""
    path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
    if path == TOKEN_PATH:
        body = {**body, "error": "invalid_request", "error_description": body["detail"]}
    response = JSONResponse(body, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, but a refused preflight answers ``{"detail": ...}`` JSON
    like every other error (Starlette's is plain text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        detail = bytes(response.body).decode()
        return JSONResponse({"detail": detail}, status_code=response.status_code, headers=headers)


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add authdb's middleware to the service application.

    Added innermost first: CORS (only with configured origins), then the body limit, then the
    header limit, then the security headers, outermost, so that 413s, 431s and CORS preflights
    carry them too. The security headers only touch the response, so the header limit is
    still the first thing to look at a request.
    """
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=settings.cors_origins,
            # Bearer tokens travel in a header, not cookies: no credentialed requests needed.
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After", "WWW-Authenticate"],
            max_age=600,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderLimitMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
