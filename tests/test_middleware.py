"""Response hardening: security headers, no-store, the body limit and CORS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from starlette.types import Message, Receive, Scope, Send

from authdb import Settings
from authdb.http.errors import install_error_handlers
from authdb.http.middleware import BodyLimitMiddleware, install_middleware
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
HARDENED = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def _assert_hardened(response: httpx.Response, cache: str | None = "no-store") -> None:
    for name, value in HARDENED.items():
        assert response.headers.get(name) == value, (name, response.request.url)
    if cache is not None:
        assert response.headers.get("cache-control") == cache, response.request.url


async def _chunks(total: int, size: int = 512) -> AsyncIterator[bytes]:
    """A body without Content-Length: httpx sends it chunked."""
    sent = 0
    while sent < total:
        chunk = b"a" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


async def test_every_response_is_hardened_and_not_stored(harness: Harness) -> None:
    await harness.create_user()
    responses = [
        await harness.client.get("/healthz"),
        await harness.client.get("/no/such/route"),
        await harness.client.get("/users/me"),
        await harness.client.post("/token", data={"username": "alice", "password": "nope-nope"}),
        await harness.client.post("/token", data={"username": "alice"}),
        await harness.client.post("/token", data={"username": "alice", "password": PASSWORD}),
    ]
    assert [r.status_code for r in responses] == [200, 404, 401, 401, 422, 200]
    for response in responses:
        _assert_hardened(response)


async def test_swagger_ui_still_loads(harness: Harness) -> None:
    docs = await harness.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    _assert_hardened(docs)
    # Served from the package, so a strict policy fits (tests/test_docs_offline.py checks it).
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    assert (await harness.client.get("/openapi.json")).status_code == 200


async def test_a_body_over_the_limit_with_content_length_gets_413(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(max_body_bytes=2048)
    response = await harness.client.post("/token", content=b"a" * 2049, headers=FORM)
    assert response.status_code == 413
    assert response.json()["detail"] == "Request body too large"  # and OAuth fields on /token
    assert response.headers["connection"] == "close"
    _assert_hardened(response)


async def test_a_chunked_body_over_the_limit_gets_413(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_body_bytes=2048)
    request = harness.client.build_request("POST", "/token", content=_chunks(4096), headers=FORM)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await harness.client.send(request)
    assert response.status_code == 413
    assert response.json()["detail"] == "Request body too large"
    _assert_hardened(response)


async def test_a_chunked_json_body_over_the_limit_gets_413(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_body_bytes=2048)
    response = await harness.client.post(
        "/password/forgot",
        content=_chunks(3000),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large"}


async def test_bodies_within_the_limit_pass_chunked_or_not(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_body_bytes=2048)
    await harness.create_user()
    form = f"username=alice&password={PASSWORD.replace(' ', '+')}".encode()
    padded = form + b"&pad=" + b"x" * (2048 - len(form) - len(b"&pad="))
    assert len(padded) == 2048  # exactly at the limit is allowed
    plain = await harness.client.post("/token", content=padded, headers=FORM)
    assert plain.status_code == 200, plain.text

    async def once() -> AsyncIterator[bytes]:
        yield form[:10]
        yield form[10:]

    chunked = await harness.client.post("/token", content=once(), headers=FORM)
    assert chunked.status_code == 200, chunked.text


async def test_no_cors_headers_by_default(harness: Harness) -> None:
    preflight = await harness.client.options(
        "/token",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = await harness.client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_for_configured_origins_only(make_harness: MakeHarness) -> None:
    harness = await make_harness(cors_origins="https://app.example, https://admin.example")
    await harness.create_user()
    preflight = await harness.client.options(
        "/users/me",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in preflight.headers
    _assert_hardened(preflight, cache=None)

    login = await harness.client.post(
        "/token",
        data={"username": "alice", "password": PASSWORD},
        headers={"Origin": "https://admin.example"},
    )
    assert login.headers["access-control-allow-origin"] == "https://admin.example"
    assert "retry-after" in login.headers["access-control-expose-headers"].lower()

    stranger = await harness.client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers
    refused = await harness.client.options(
        "/token",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


# --- the middleware on its own ------------------------------------------------------------------


def _bare_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_middleware(app, Settings(_env_file=None, max_body_bytes=1024))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/cacheable")
    async def cacheable() -> Response:
        return Response("public", headers={"Cache-Control": "max-age=60"})

    @app.post("/echo-length")
    async def echo_length(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    return app


async def test_unhandled_errors_are_hardened_and_say_nothing() -> None:
    transport = httpx.ASGITransport(app=_bare_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert "secret" not in response.text
    _assert_hardened(response)


async def test_a_route_may_choose_its_own_cache_control() -> None:
    transport = httpx.ASGITransport(app=_bare_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/cacheable")
        assert response.headers["cache-control"] == "max-age=60"
        _assert_hardened(response, cache=None)
        # A handler reading the raw stream is stopped too, not only FastAPI's body parsing.
        big = await client.post("/echo-length", content=_chunks(1025))
        assert (big.status_code, big.json()) == (413, {"detail": "Request body too large"})
        small = await client.post("/echo-length", content=_chunks(1024))
        assert small.json() == {"length": 1024}


async def test_a_declared_oversize_body_is_refused_without_reading_it() -> None:
    reads = 0
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the application must not be called")

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-length", b"5000")],
    }
    await BodyLimitMiddleware(app, max_bytes=1024)(scope, receive, send)
    assert reads == 0
    assert sent[0]["status"] == 413


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
async def test_other_scopes_pass_through(kind: str) -> None:
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    async def nothing(*_: Any) -> Any:
        return None

    await BodyLimitMiddleware(app, max_bytes=1024)({"type": kind}, nothing, nothing)
    assert called == [kind]


async def test_a_content_length_of_non_ascii_digits_is_no_500() -> None:
    """``"²".isdigit()`` is true but ``int("²")`` fails; a server that passes such a header
    (latin-1 byte 0xB2) on must not turn it into a 500."""
    answered: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answered.append(message["status"])

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "headers": [(b"content-length", b"\xb2")],
    }
    await BodyLimitMiddleware(app, max_bytes=1024)(scope, receive, send)
    assert answered == [204]
