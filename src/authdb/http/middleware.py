"""Response hardening for the standalone service: security headers, body limit, CORS.

All of it is pure ASGI: ``BaseHTTPMiddleware`` would buffer and could not count the bytes
of a chunked body while it streams in.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authdb.settings import Settings

SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    # Links in an auth app's pages may carry tokens in their query; never leak them onward.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# No Content-Security-Policy: /docs loads Swagger UI from a CDN with an inline script.

# Everything here is a token, a user, an error about one, or cheap to fetch again: by
# default nothing may be stored by a browser or a shared cache.
DEFAULT_CACHE_CONTROL = "no-store"

TOO_LARGE = {"detail": "Request body too large"}


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
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Cache-Control", DEFAULT_CACHE_CONTROL)
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
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
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


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    # Closing the connection stops a client that would otherwise keep sending the rest.
    response = JSONResponse(TOO_LARGE, status_code=413, headers={"Connection": "close"})
    await response(scope, receive, send)


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add authdb's middleware to the service application.

    Added innermost first: CORS (only with configured origins), then the body limit, then
    the headers, outermost, so that 413s and CORS preflights carry them too.
    """
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            # Bearer tokens travel in a header, not cookies: no credentialed requests needed.
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After", "WWW-Authenticate"],
            max_age=600,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
