"""The HTTP surface: header limits, malformed bodies, list-shaped 422s, the OpenAPI document's
error declarations, OPTIONS / 405 / CORS answers (issue 9, items 13 and 14)."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI
from uvicorn.config import Config
from uvicorn.server import ServerState

from authdb.http.errors import install_error_handlers
from authdb.http.server import MAX_HEAD_BYTES, HeadLimitedProtocol
from tests.conftest import PASSWORD, Harness, free_port

JSON = {"Content-Type": "application/json"}
ALL_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


@pytest.fixture
def jwt_decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts ``jwt.decode`` calls (the length of each token decoded)."""
    calls: list[int] = []
    real = jwt.decode

    def counting(token: str | bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(token))
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    yield calls


def _issues(response: httpx.Response) -> list[dict[str, Any]]:
    """The 422's ``detail``, checked to be FastAPI's list of ``{type, loc, msg}``."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    for issue in detail:
        assert set(issue) == {"type", "loc", "msg"}, issue
        assert isinstance(issue["loc"], list) and isinstance(issue["msg"], str)
    return list(detail)


# --- 13: oversized headers and bearer tokens ----------------------------------------------------


async def test_a_60_mb_authorization_header_gets_431_without_being_decoded(
    harness: Harness, jwt_decodes: list[int]
) -> None:
    huge = {"Authorization": "Bearer " + "a" * 60_000_000}
    response = await harness.client.get("/users/me", headers=huge)
    assert response.status_code == 431
    assert response.json() == {"detail": "Request headers too large"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert jwt_decodes == []


async def test_a_1_mb_jwt_gets_431_without_being_decoded(
    harness: Harness, jwt_decodes: list[int]
) -> None:
    await harness.create_user()
    real = (await harness.login())["access_token"]
    header, _claims, signature = real.split(".")
    padded = f"{header}.{'A' * 1_000_000}.{signature}"
    response = await harness.client.get("/users/me", headers={"Authorization": f"Bearer {padded}"})
    assert response.status_code == 431
    assert jwt_decodes == []


async def test_many_small_headers_over_16_kib_in_all_get_431(harness: Harness) -> None:
    headers = {f"x-filler-{i}": "v" * 1000 for i in range(17)}
    response = await harness.client.get("/healthz", headers=headers)
    assert response.status_code == 431
    below = {f"x-filler-{i}": "v" * 1000 for i in range(15)}
    assert (await harness.client.get("/healthz", headers=below)).status_code == 200


async def test_a_bearer_token_over_8_kib_is_refused_unparsed(
    harness: Harness, jwt_decodes: list[int]
) -> None:
    # Under the header limit, so it reaches the dependency: refused by length alone.
    token = "e" * (8 * 1024 + 1)
    response = await harness.client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}
    assert response.headers["www-authenticate"] == "Bearer"
    assert jwt_decodes == []
    # A token of ordinary size is still decoded (and refused on its merits).
    short = await harness.client.get("/users/me", headers={"Authorization": "Bearer e.e.e"})
    assert short.status_code == 401
    assert jwt_decodes == [5]


async def test_a_1_mb_jwt_is_refused_unparsed_in_an_app_that_mounts_authdb(
    harness: Harness, jwt_decodes: list[int]
) -> None:
    # An application of one's own has no header limit: the bearer cap is what protects it.
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(harness.auth.router)

    @app.get("/items")
    async def items(user: Any = Depends(harness.auth.current_user)) -> dict[str, str]:
        return {"owner": user.username}

    await harness.create_user()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        token = await client.post("/token", data={"username": "alice", "password": PASSWORD})
        good = {"Authorization": f"Bearer {token.json()['access_token']}"}
        assert (await client.get("/items", headers=good)).json() == {"owner": "alice"}
        decoded = len(jwt_decodes)
        huge = {"Authorization": "Bearer " + "A" * 1_000_000}
        for path in ("/items", "/users/me"):
            response = await client.get(path, headers=huge)
            assert response.status_code == 401, path
            assert response.json() == {"detail": "Could not validate credentials"}
    assert len(jwt_decodes) == decoded


class _Transport(asyncio.Transport):
    """Collects what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )


def _protocol() -> tuple[HeadLimitedProtocol, _Transport]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        payload = str(size).encode()
        length = [(b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": payload})

    protocol = HeadLimitedProtocol(
        config=Config(app=app, lifespan="off"),
        server_state=ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_the_server_stops_reading_a_giant_head_after_a_bounded_number_of_bytes() -> None:
    # httptools' cost grows with the square of a header's size, before any middleware runs:
    # `authdb serve`'s protocol must give up after a bounded read, whatever the client sends.
    protocol, transport = _protocol()
    chunk = 64 * 1024
    protocol.data_received(b"GET /users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
    fed = 0
    while not transport.closed and fed < 60_000_000:
        protocol.data_received(b"a" * chunk)
        fed += chunk
    assert transport.closed
    assert fed <= MAX_HEAD_BYTES + chunk
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body) == {"detail": "Request headers too large"}


async def test_the_server_protocol_lets_a_big_body_through_after_a_small_head() -> None:
    protocol, transport = _protocol()
    body = b"x" * (4 * MAX_HEAD_BYTES)
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    protocol.data_received(head + body[:1000])  # head and body in one read, as often
    for start in range(1000, len(body), 16 * 1024):
        protocol.data_received(body[start : start + 16 * 1024])
    for _ in range(200):  # the application runs as a task
        if transport.written.endswith(str(len(body)).encode()):
            break
        await asyncio.sleep(0.01)
    assert bytes(transport.written).startswith(b"HTTP/1.1 200 ")
    assert bytes(transport.written).endswith(b"\r\n\r\n" + str(len(body)).encode())
    assert not transport.closed


# --- 14: malformed bodies -----------------------------------------------------------------------


MALFORMED_JSON: list[tuple[bytes, str]] = [
    (b'{"email": "caf\xe9@example.com"}', "Body is not valid UTF-8"),  # Latin-1
    ('{"email": "a@example.com"}'.encode("utf-16"), "Body is not valid UTF-8"),
    (b"[" * 100_000, "JSON nested deeper than 32 levels"),  # past Python's recursion limit
    (b'{"email": ' + b"[" * 40 + b"]" * 40 + b"}", "JSON nested deeper than 32 levels"),
    (b'{"email": ', "JSON decode error"),
    (b"not json at all", "JSON decode error"),
]


async def test_malformed_json_bodies_get_422_with_a_list_detail(harness: Harness) -> None:
    for body, message in MALFORMED_JSON:
        for path in ("/register", "/password/forgot", "/verify"):
            response = await harness.client.post(path, content=body, headers=JSON)
            [issue] = _issues(response)
            assert issue["msg"] == message, (path, body[:20], issue)
            assert issue["type"] == "json_invalid"
            assert issue["loc"][0] == "body"


async def test_shallow_json_with_many_brackets_is_not_mistaken_for_deep(harness: Harness) -> None:
    # 40 brackets, none deeper than 2: the depth check must measure, not count.
    body = json.dumps({"email": "a@example.com", "x": [[1]] * 20}).encode()
    response = await harness.client.post("/password/forgot", content=body, headers=JSON)
    assert response.status_code == 202, response.text


async def test_malformed_json_on_an_authenticated_route_is_422(harness: Harness) -> None:
    await harness.create_user()
    headers = {**await harness.bearer(), **JSON}
    for body in (b"\xff\xfe", b"[" * 5000):
        response = await harness.client.patch("/users/me", content=body, headers=headers)
        assert response.status_code == 422, response.text
        _issues(response)


BROKEN_FORMS: list[tuple[str, bytes]] = [
    ("multipart/form-data", b"username=alice&password=x"),  # no boundary
    ("multipart/form-data; boundary=b", b"--b\r\nno headers, no end"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--"),
    ("application/x-www-form-urlencoded", b"\xff\xfe=\xff&username"),
]


async def test_broken_forms_on_token_get_422_not_400(harness: Harness) -> None:
    for content_type, body in BROKEN_FORMS:
        headers = {"Content-Type": content_type}
        response = await harness.client.post("/token", content=body, headers=headers)
        issues = _issues(response)
        assert all(issue["loc"][0] == "body" for issue in issues), (body, issues)
    no_boundary = await harness.client.post(
        "/token", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    assert _issues(no_boundary)[0]["msg"] == "Malformed form data: Missing boundary in multipart."


async def test_a_route_s_own_400_is_not_mistaken_for_an_unreadable_body(harness: Harness) -> None:
    response = await harness.client.post("/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert isinstance(response.json()["detail"], str)


# --- 14: the product's own 422s have FastAPI's list shape ---------------------------------------


async def test_rule_violations_are_422_with_a_list_naming_the_field(harness: Harness) -> None:
    weak = {"username": "someone", "email": "someone@example.com", "password": "password123"}
    response = await harness.client.post("/register", json=weak)
    assert _issues(response) == [
        {"type": "value_error", "loc": ["body", "password"], "msg": "Password is too common"}
    ]
    short = {**weak, "username": "al", "password": PASSWORD}
    [issue] = _issues(await harness.client.post("/register", json=short))
    assert issue == {
        "type": "value_error",
        "loc": ["body", "username"],
        "msg": "Username must be 3 to 64 characters long",
    }


async def test_missing_token_fields_are_422_like_fastapi_s_own(harness: Harness) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({"username": "alice"}, "password"),
        ({"password": PASSWORD}, "username"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"grant_type": "refresh_token"}, "refresh_token"),
    ]
    for form, field in cases:
        [issue] = _issues(await harness.client.post("/token", data=form))
        assert issue == {"type": "missing", "loc": ["body", field], "msg": "Field required"}


# --- 14: the OpenAPI document tells the truth ---------------------------------------------------

# What each operation can answer besides success; 413 and 431 come from the service's middleware.
EXPECTED_ERRORS: dict[tuple[str, str], set[int]] = {
    ("post", "/token"): {400, 401, 403, 422, 429, 503},
    ("post", "/revoke"): {422, 503},
    ("get", "/.well-known/jwks.json"): set(),
    ("get", "/.well-known/oauth-authorization-server"): set(),
    ("post", "/logout"): {401, 422, 503},
    ("get", "/users/me"): {400, 401, 503},
    ("get", "/users/me/sessions"): {401, 503},
    ("get", "/users/me/events"): {401, 422, 503},
    ("delete", "/users/me/sessions/{session_id}"): {401, 404, 422, 503},
    ("post", "/register"): {403, 409, 422, 429, 503},
    ("post", "/verify/request"): {422, 429, 503},
    ("post", "/verify"): {400, 409, 422, 503},
    ("post", "/password/forgot"): {422, 429, 503},
    ("post", "/password/reset"): {400, 422, 503},
    ("patch", "/users/me"): {400, 401, 409, 422, 429, 503},
    ("post", "/users/me/password"): {400, 401, 422, 429, 503},
    ("delete", "/users/me"): {400, 401, 409, 422, 429, 503},
    ("get", "/users"): {400, 401, 403, 422, 503},
    ("get", "/users/{user_id}"): {400, 401, 403, 404, 422, 503},
    ("patch", "/users/{user_id}"): {400, 401, 403, 404, 409, 422, 503},
    ("delete", "/users/{user_id}"): {400, 401, 403, 404, 409, 422, 503},
    ("post", "/users/me/mfa/totp/setup"): {400, 401, 409, 422, 429, 503},
    ("post", "/users/me/mfa/totp/confirm"): {400, 401, 409, 422, 429, 503},
    ("post", "/users/me/mfa/recovery-codes"): {400, 401, 409, 422, 429, 503},
    ("delete", "/users/me/mfa"): {400, 401, 409, 422, 429, 503},
    ("delete", "/users/{user_id}/mfa"): {400, 401, 403, 404, 422, 503},
    ("post", "/users/me/passkeys/options"): {400, 401, 403, 409, 422, 429, 501, 503},
    ("get", "/users/me/passkeys"): {400, 401, 503},
    ("post", "/users/me/passkeys"): {400, 401, 409, 422, 501, 503},
    ("delete", "/users/me/passkeys/{passkey_id}"): {400, 401, 404, 422, 429, 503},
    ("post", "/passkeys/login/options"): {409, 422, 501, 503},
    ("post", "/passkeys/login"): {400, 401, 403, 409, 422, 429, 501, 503},
}


def _schema(doc: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    ref = response["content"]["application/json"]["schema"]["$ref"]
    return dict(doc["components"]["schemas"][ref.rsplit("/", 1)[1]])


async def test_every_route_declares_its_error_statuses_with_the_detail_model(
    harness: Harness,
) -> None:
    doc = (await harness.client.get("/openapi.json")).json()
    operations = {
        (method, path): op for path, ops in doc["paths"].items() for method, op in ops.items()
    }
    assert set(EXPECTED_ERRORS) <= set(operations)
    for key, op in operations.items():
        declared = {int(status) for status in op["responses"] if status[0] in "45"}
        assert {413, 431} <= declared, key
        if key in EXPECTED_ERRORS:
            assert declared == EXPECTED_ERRORS[key] | {413, 431}, key
        for status, response in op["responses"].items():
            if status[0] not in "45" or key == ("get", "/readyz"):
                continue
            schema = _schema(doc, response)
            assert "detail" in schema["required"], (key, status)
            detail = schema["properties"]["detail"]
            if status == "422":
                shapes = detail.get("anyOf", [detail])
                assert any(shape.get("type") == "array" for shape in shapes), key
            elif key not in {("post", "/token"), ("post", "/revoke")}:
                assert detail["type"] == "string", (key, status)
    for status in ("429", "503"):
        assert "Retry-After" in operations["post", "/token"]["responses"][status]["headers"]


async def test_token_errors_declare_the_oauth_fields(harness: Harness) -> None:
    doc = (await harness.client.get("/openapi.json")).json()
    responses = doc["paths"]["/token"]["post"]["responses"]
    for status in ("400", "401", "403", "422", "429"):
        schema = _schema(doc, responses[status])
        assert {"detail", "error", "error_description"} <= set(schema["properties"]), status
    # 403 "MFA required" carries what the MFA grant needs.
    assert {"mfa_token", "mfa_methods"} <= set(_schema(doc, responses["403"])["properties"])


async def test_validation_issues_are_declared_without_the_echoed_input(harness: Harness) -> None:
    doc = (await harness.client.get("/openapi.json")).json()
    issue = doc["components"]["schemas"]["ValidationIssue"]
    assert set(issue["properties"]) == {"loc", "msg", "type"}
    # A real 422 matches it exactly: no input (it may be a password) is sent back.
    response = await harness.client.post("/register", json={"password": "hunter2-secret"})
    for entry in _issues(response):
        assert set(entry) == set(issue["properties"])
    assert "hunter2-secret" not in response.text


# --- OPTIONS, 405, 404 and CORS answers ---------------------------------------------------------


def _allow(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers["allow"].split(",")}


async def test_options_reports_every_method_of_a_path(harness: Harness) -> None:
    cases: list[tuple[str, set[str]]] = [
        ("/users/me", {"GET", "PATCH", "DELETE"}),  # three routes, one path
        ("/token", {"POST"}),
        ("/users/1", {"GET", "PATCH", "DELETE"}),
        ("/users/me/sessions/1", {"DELETE"}),
        ("/healthz", {"GET"}),
        ("/docs", {"GET"}),
    ]
    for path, methods in cases:
        response = await harness.client.options(path)
        assert response.status_code == 204, path
        assert _allow(response) == methods | {"OPTIONS"}, path
        assert response.content == b""


async def test_a_wrong_method_gets_json_405_with_the_full_allow(harness: Harness) -> None:
    for method in sorted(ALL_METHODS - {"GET", "PATCH", "DELETE", "OPTIONS"}):
        response = await harness.client.request(method, "/users/me")
        assert response.status_code == 405, method
        assert _allow(response) == {"GET", "PATCH", "DELETE", "OPTIONS"}
        if method != "HEAD":
            assert response.json() == {"detail": "Method Not Allowed"}


async def test_an_unknown_path_gets_json_404_for_any_method(harness: Harness) -> None:
    for method in ("GET", "POST", "OPTIONS", "DELETE"):
        response = await harness.client.request(method, "/no/such/thing")
        assert response.status_code == 404, method
        assert response.json() == {"detail": "Not Found"}


async def test_a_refused_cors_preflight_answers_json(
    make_harness: Callable[..., Any],
) -> None:
    harness = await make_harness(cors_origins="https://app.example")
    cases = [
        ({"Origin": "https://evil.example"}, "POST", "Disallowed CORS origin"),
        ({"Origin": "https://app.example"}, "PUT", "Disallowed CORS method"),
        (
            {"Origin": "https://app.example", "Access-Control-Request-Headers": "x-secret"},
            "POST",
            "Disallowed CORS headers",
        ),
    ]
    for headers, method, detail in cases:
        response = await harness.client.options(
            "/token", headers={**headers, "Access-Control-Request-Method": method}
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": detail}
    allowed = await harness.client.options(
        "/token",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    # Without a preflight's headers, OPTIONS is a plain question about the path.
    plain = await harness.client.options("/users/me", headers={"Origin": "https://app.example"})
    assert plain.status_code == 204
    assert _allow(plain) == {"GET", "PATCH", "DELETE", "OPTIONS"}
    assert plain.headers["access-control-allow-origin"] == "https://app.example"


# --- sign-in with other providers: page routes, not API operations ------------------------------


async def test_provider_routes_answer_pages_and_stay_out_of_the_openapi_document(
    make_harness: Callable[..., Any],
) -> None:
    # A provider whose issuer does not answer: nothing here needs it to.
    harness = await make_harness(
        oauth_providers="corp",
        oauth_corp_client_id="corp-client",
        oauth_corp_client_secret="corp-secret-for-the-surface-test",
        oauth_corp_issuer=f"http://127.0.0.1:{free_port()}",
    )
    client = harness.client
    doc = (await client.get("/openapi.json")).json()
    operations = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert set(EXPECTED_ERRORS) <= operations
    assert not [path for path in doc["paths"] if path.startswith(("/oauth/", "/account"))]
    cases: list[tuple[str, int, str]] = [
        ("/oauth/nope/authorize", 404, "No such sign-in provider"),
        ("/oauth/nope/callback?code=c&state=s", 404, "No such sign-in provider"),
        ("/oauth/" + "x" * 5000 + "/authorize", 404, "No such sign-in provider"),
        # No flow cookie: this browser started no sign-in.
        ("/oauth/corp/callback?code=c&state=s", 400, "could not be completed"),
        ("/oauth/corp/callback", 400, "could not be completed"),
        # The provider is down: a page that says so, not a 500.
        ("/oauth/corp/authorize", 502, "could not be reached"),
    ]
    for path, status, words in cases:
        response = await client.get(path)
        assert response.status_code == status, (path[:40], response.text)
        assert response.headers["content-type"].startswith("text/html"), path[:40]
        assert words in html.unescape(response.text), path[:40]
    for path in ("/oauth/corp/authorize", "/oauth/corp/callback"):
        options = await client.options(path)
        assert options.status_code == 204
        assert _allow(options) == {"GET", "OPTIONS"}
        for method in ("POST", "PUT", "DELETE"):
            refused = await client.request(method, path)
            assert refused.status_code == 405, (method, path)
            assert refused.json() == {"detail": "Method Not Allowed"}
    # The account's forms need a session and the CSRF token, known provider or not.
    for path in ("/account/oauth/corp/link", "/account/oauth/corp/unlink", "/account/oauth/x/link"):
        assert (await client.post(path)).status_code == 403, path
    prefix = await client.get("/account/oauth")
    assert (prefix.status_code, prefix.headers["location"]) == (303, "/account")
