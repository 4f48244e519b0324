"""A stand-in for GitHub's OAuth web flow and the two REST endpoints a sign-in needs.

It speaks the documented endpoints
(https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps) on
``http://127.0.0.1:<port>``, served by uvicorn in a background thread:

- ``GET /login/oauth/authorize?client_id&redirect_uri&scope&state&code_challenge
  &code_challenge_method=S256``: an HTML page, one form: ``input[name=login]`` (the user's login
  or numeric id), ``button#authorize`` ("Authorize") and ``button#cancel`` ("Cancel"). Authorize
  redirects to ``redirect_uri?code=...&state=...``; Cancel to ``redirect_uri?error=access_denied
  &error_description=...&error_uri=...&state=...``. An unknown client_id, a redirect_uri that is
  not registered (matched exactly: stricter than GitHub) or a bad code_challenge_method gives a
  400 error page, never a redirect. Without redirect_uri the first registered one is used. The
  page is shown every time (no "already authorized" shortcut, no cookies).
- ``POST /login/oauth/access_token`` (form: client_id, client_secret, code, redirect_uri,
  code_verifier; client credentials in the form or HTTP Basic): ``Accept: application/json`` gives
  ``{"access_token","token_type":"bearer","scope"}``, otherwise the same form-encoded, as GitHub.
  Failures are HTTP 200 with ``{"error","error_description","error_uri"}``:
  ``incorrect_client_credentials``, ``bad_verification_code`` (unknown, used, expired - 10 min -
  or another client's code, and a wrong/missing code_verifier when the authorize request had a
  challenge), ``redirect_uri_mismatch``. ``scope`` is the granted scopes joined by commas.
- ``GET /api/user`` (``Authorization: Bearer <t>`` or ``token <t>``): ``{"id","login","name",
  "email",...}`` (email null unless the user has a public email); ``GET /api/user/emails``:
  ``[{"email","primary","verified","visibility"}]``, only with scope ``user:email`` or ``user``
  (404 ``Not Found`` otherwise, as GitHub answers a token lacking the scope). A missing or unknown
  token gives 401 ``{"message":"Bad credentials",...}``. Responses carry ``X-OAuth-Scopes``.
  A user added with ``user_json`` has those keys of ``/api/user``'s answer replaced as given
  (``{"id": True}``, a 30-digit id...), to play a GitHub that answers oddly.

Use :func:`start_github_standin` (or the ``github_standin`` fixture of tests/oauth_servers.py).
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CODE_TTL = 600.0
DOCS = "https://docs.github.com"
ACCESS_DENIED_DESCRIPTION = "The user has denied your application access."
TOKEN_ERRORS = {
    "incorrect_client_credentials": (
        "The client_id and/or client_secret passed are incorrect.",
        f"{DOCS}/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"
        "/#incorrect-client-credentials",
    ),
    "redirect_uri_mismatch": (
        "The redirect_uri MUST match the registered callback URL for this application.",
        f"{DOCS}/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"
        "/#redirect-uri-mismatch2",
    ),
    "bad_verification_code": (
        "The code passed is incorrect or expired.",
        f"{DOCS}/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"
        "/#bad-verification-code",
    ),
}


@dataclass
class GitHubClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]


@dataclass
class GitHubUser:
    id: int
    login: str
    name: str | None = None
    public_email: str | None = None
    emails: list[dict[str, Any]] = field(default_factory=list)
    # Keys of /api/user's JSON answer to serve as given, over the ones above.
    user_json: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Code:
    client_id: str
    user_id: int
    redirect_uri: str
    scopes: list[str]
    challenge: str | None
    expires: float


@dataclass
class _Token:
    client_id: str
    user_id: int
    scopes: list[str]


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title></head>\n'
        f"<body>\n{body}\n</body></html>\n",
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


class GitHubStandin:
    """The app and its state; thread-safe Python API to register clients and users."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clients: dict[str, GitHubClient] = {}
        self.users: dict[int, GitHubUser] = {}
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, _Token] = {}
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.app = Starlette(
            routes=[
                Route("/login/oauth/authorize", self._authorize, methods=["GET", "POST"]),
                Route("/login/oauth/access_token", self._access_token, methods=["POST"]),
                Route("/api/user", self._api_user, methods=["GET"]),
                Route("/api/user/emails", self._api_emails, methods=["GET"]),
            ]
        )

    # ---- Python API ----
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}/login/oauth/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/login/oauth/access_token"

    def add_client(self, redirect_uris: list[str]) -> tuple[str, str]:
        """Register an OAuth app; returns ``(client_id, client_secret)``."""
        client = GitHubClient(
            client_id="Iv1." + secrets.token_hex(8),
            client_secret=secrets.token_hex(20),
            redirect_uris=list(redirect_uris),
        )
        with self._lock:
            self.clients[client.client_id] = client
        return client.client_id, client.client_secret

    def add_user(
        self,
        id: int,
        login: str,
        name: str | None = None,
        public_email: str | None = None,
        emails: list[dict[str, Any]] | None = None,
        user_json: dict[str, Any] | None = None,
    ) -> GitHubUser:
        """Add (or replace) a user.

        ``emails``: dicts with ``email`` and optionally ``primary`` (default False), ``verified``
        (default True), ``visibility`` (default "public" for the primary, else None). Without
        ``emails``, ``public_email`` (if any) becomes the one primary, verified address.
        ``user_json``: keys of ``/api/user``'s answer to serve as given (the stand-in still
        finds the user by ``id`` and ``login`` on its own pages).
        """
        if emails is None:
            emails = [{"email": public_email, "primary": True}] if public_email else []
        normalized = [
            {
                "email": e["email"],
                "primary": bool(e.get("primary", False)),
                "verified": bool(e.get("verified", True)),
                "visibility": e.get("visibility", "public" if e.get("primary") else None),
            }
            for e in emails
        ]
        user = GitHubUser(
            id=id,
            login=login,
            name=name,
            public_email=public_email,
            emails=normalized,
            user_json=dict(user_json or {}),
        )
        with self._lock:
            self.users[id] = user
        return user

    def expire_codes(self) -> None:
        """Make every authorization code issued so far expired (to test the 10-minute limit)."""
        with self._lock:
            for code in self._codes.values():
                code.expires = 0.0

    def revoke_tokens(self) -> None:
        """Forget every access token issued so far (the API then answers 401)."""
        with self._lock:
            self._tokens.clear()

    # ---- server ----
    def start(self, port: int = 0) -> None:
        """Serve on 127.0.0.1:``port`` (0: a free one; after :meth:`stop`, the same again)."""
        if self._thread is not None:
            raise RuntimeError("already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port or self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="github-standin", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("the GitHub stand-in did not start")
            time.sleep(0.01)
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=15)
        if self._sock is not None:
            self._sock.close()
        self._server, self._thread, self._sock = None, None, None

    # ---- web flow ----
    def _authorize_page(
        self, params: dict[str, str], client: GitHubClient, message: str = ""
    ) -> Response:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "login"
        )
        alert = f'<p id="error" role="alert">{html.escape(message)}</p>' if message else ""
        return _page(
            "Authorize application",
            f'<h1>Authorize <span id="client">{html.escape(client.client_id)}</span></h1>\n'
            f'<p>Scopes: <span id="scopes">{html.escape(params.get("scope", ""))}</span></p>\n'
            f"{alert}\n"
            '<form method="post" action="/login/oauth/authorize">\n'
            f"{hidden}\n"
            '<label>Username <input type="text" name="login" autocomplete="username" '
            f'value="{html.escape(params.get("login", ""))}" autofocus></label>\n'
            '<button type="submit" id="authorize" name="action" value="authorize">'
            "Authorize</button>\n"
            '<button type="submit" id="cancel" name="action" value="cancel">Cancel</button>\n'
            "</form>",
        )

    async def _authorize(self, request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            params = {k: str(v) for k, v in form.items()}
        else:
            params = dict(request.query_params)
        action = params.pop("action", None)
        with self._lock:
            client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return _page("Error", '<p id="error">Unknown client_id.</p>', 400)
        redirect_uri = params.get("redirect_uri") or client.redirect_uris[0]
        if redirect_uri not in client.redirect_uris:
            return _page(
                "Error",
                '<p id="error">The redirect_uri is not associated with this application.</p>',
                400,
            )
        method = params.get("code_challenge_method")
        if params.get("code_challenge") and method not in (None, "S256"):
            return _page("Error", '<p id="error">Unsupported code_challenge_method.</p>', 400)
        state = {"state": params["state"]} if "state" in params else {}
        if request.method == "GET" or action not in ("authorize", "cancel"):
            return self._authorize_page(params, client)
        if action == "cancel":
            return RedirectResponse(
                _with_query(
                    redirect_uri,
                    {
                        "error": "access_denied",
                        "error_description": ACCESS_DENIED_DESCRIPTION,
                        "error_uri": f"{DOCS}/apps/managing-oauth-apps/troubleshooting-"
                        "authorization-request-errors/#access-denied",
                        **state,
                    },
                ),
                status_code=302,
            )
        login = params.get("login", "").strip()
        with self._lock:
            user = next((u for u in self.users.values() if login in (u.login, str(u.id))), None)
        if user is None:
            return self._authorize_page(params, client, "Unknown login")
        code = secrets.token_hex(10)
        with self._lock:
            self._codes[code] = _Code(
                client_id=client.client_id,
                user_id=user.id,
                redirect_uri=redirect_uri,
                scopes=[s for s in params.get("scope", "").replace(",", " ").split() if s],
                challenge=params.get("code_challenge") or None,
                expires=time.time() + CODE_TTL,
            )
        return RedirectResponse(_with_query(redirect_uri, {"code": code, **state}), status_code=302)

    async def _access_token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        wants_json = "application/json" in request.headers.get("accept", "")

        def answer(body: dict[str, str]) -> Response:
            if wants_json:
                return JSONResponse(body)
            return Response(urlencode(body), media_type="application/x-www-form-urlencoded")

        def error(name: str) -> Response:
            description, uri = TOKEN_ERRORS[name]
            return answer({"error": name, "error_description": description, "error_uri": uri})

        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = request.headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
                client_id, _, client_secret = decoded.partition(":")
            except ValueError:
                return error("incorrect_client_credentials")
        with self._lock:
            client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.client_secret, client_secret):
            return error("incorrect_client_credentials")
        with self._lock:
            code = self._codes.pop(form.get("code", ""), None)  # single use, even on failure
        if code is None or code.client_id != client.client_id or code.expires <= time.time():
            return error("bad_verification_code")
        if form.get("redirect_uri") and form["redirect_uri"] != code.redirect_uri:
            return error("redirect_uri_mismatch")
        if code.challenge is not None:
            verifier = form.get("code_verifier", "")
            expected = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .rstrip(b"=")
                .decode()
            )
            if not verifier or not secrets.compare_digest(expected, code.challenge):
                return error("bad_verification_code")
        token = "gho_" + secrets.token_urlsafe(27)
        with self._lock:
            self._tokens[token] = _Token(client.client_id, code.user_id, code.scopes)
        return answer(
            {"access_token": token, "token_type": "bearer", "scope": ",".join(code.scopes)}
        )

    # ---- API ----
    def _token_for(self, request: Request) -> _Token | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        with self._lock:
            return self._tokens.get(value.strip())

    @staticmethod
    def _api_error(status: int, message: str) -> Response:
        return JSONResponse(
            {"message": message, "documentation_url": f"{DOCS}/rest", "status": str(status)},
            status_code=status,
        )

    async def _api_user(self, request: Request) -> Response:
        token = self._token_for(request)
        with self._lock:
            user = self.users.get(token.user_id) if token else None
        if token is None or user is None:
            return self._api_error(401, "Bad credentials")
        return JSONResponse(
            {
                "login": user.login,
                "id": user.id,
                "type": "User",
                "html_url": f"https://github.com/{user.login}",
                "name": user.name,
                "email": user.public_email,
                **user.user_json,
            },
            headers={"X-OAuth-Scopes": ", ".join(token.scopes)},
        )

    async def _api_emails(self, request: Request) -> Response:
        token = self._token_for(request)
        with self._lock:
            user = self.users.get(token.user_id) if token else None
        if token is None or user is None:
            return self._api_error(401, "Bad credentials")
        if not {"user", "user:email"} & set(token.scopes):
            return self._api_error(404, "Not Found")
        return JSONResponse(
            [dict(e) for e in user.emails], headers={"X-OAuth-Scopes": ", ".join(token.scopes)}
        )


def start_github_standin() -> GitHubStandin:
    """A running stand-in on a free port of 127.0.0.1; call ``stop()`` when done."""
    standin = GitHubStandin()
    standin.start()
    return standin
