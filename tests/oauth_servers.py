"""Identity providers for the sign-in-with-a-provider tests, all on 127.0.0.1.

- :class:`OIDCProvider`: a real OpenID Connect provider (panva's ``oidc-provider``, Node), see
  tests/oidc/provider.mjs for what it enforces. Started as a subprocess on a free port; its
  signing key, accounts and clients live in a state file, so ``stop()`` then ``start()`` gives
  the same provider back on the same port ("provider down, then back").
- :class:`~tests.github_standin.GitHubStandin`: GitHub's OAuth web flow and ``/api/user``,
  ``/api/user/emails``, in a uvicorn thread.
- :func:`follow_to_callback`: plays the user on either provider's pages with plain httpx and
  returns the URL the provider sends the browser to on the relying party's redirect_uri, without
  requesting it.

Fixtures ``oidc_provider`` and ``github_standin`` are session-scoped (one per xdist worker) and
shared: register a client per test and use fresh account names. A test that stops a provider
should start its own (``start_oidc_provider()`` / ``start_github_standin()``) or restart it.
Use them from a test module with ``pytest_plugins = ["tests.oauth_servers"]``.

Provider pages (stable selectors, also for Playwright):
  OIDC:   ``input[name=login]`` (sub or preferred_username), ``button#signin``, ``button#deny``;
          ``#error`` shows "Unknown login". The provider keeps its session cookie
          (``op_session``): a second sign-in in the same browser/client skips the page unless
          the request has ``prompt=login``. Consent is automatic.
  GitHub: ``input[name=login]`` (login or numeric id), ``button#authorize``, ``button#cancel``;
          the page is shown every time.
The pages have no scripts; each loads nothing else (favicon is a data: URL).

(PYTEST_DONT_REWRITE: test modules import helpers from here before ``pytest_plugins`` loads it
as a plugin; this keeps pytest from warning that it cannot rewrite its asserts.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx
import pytest

from tests.conftest import free_port
from tests.github_standin import GitHubStandin, start_github_standin

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
PROVIDER_JS = OIDC_DIR / "provider.mjs"
START_SECONDS = 30.0

__all__ = [
    "GitHubStandin",
    "OIDCProvider",
    "follow_to_callback",
    "github_standin",
    "oidc_provider",
    "pkce_pair",
    "start_github_standin",
    "start_oidc_provider",
]


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE ``(code_verifier, S256 code_challenge)``."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _http() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


class OIDCProvider:
    """``node tests/oidc/provider.mjs <port> <state.json>`` and a sync API to set it up."""

    def __init__(self, port: int | None = None, state_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.dir = state_dir or Path(tempfile.mkdtemp(prefix="authdb-oidc-"))
        self.state_path = self.dir / f"state-{self.port}.json"
        self.log_path = self.dir / f"provider-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._discovery: dict[str, Any] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start (again) on ``self.port``; returns once the provider printed ``ready``."""
        if self.running:
            raise RuntimeError("the OIDC provider is already running")
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH (the OIDC provider needs Node.js >= 20)")
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(f"run `npm ci --prefix {OIDC_DIR} --no-audit --no-fund` first")
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [node, str(PROVIDER_JS), str(self.port), str(self.state_path)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self._process = process
        assert process.stdout is not None
        deadline = time.monotonic() + START_SECONDS
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                break
            ready, _, _ = select.select([process.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = process.stdout.read1(256)  # type: ignore[attr-defined]
                if not chunk:
                    break
                line += chunk
        if line.strip() != f"ready {self.issuer}".encode():
            self.stop()
            log_text = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the OIDC provider did not start ({line!r}):\n{log_text}")

    def stop(self) -> None:
        """Stop the process (by its PID) and wait for it; the state file is kept."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def discovery(self) -> dict[str, Any]:
        """The discovery document (fetched once; the endpoints never change)."""
        if self._discovery is None:
            with _http() as http:
                response = http.get(self.discovery_url)
                response.raise_for_status()
                self._discovery = dict(response.json())
        return self._discovery

    def register_client(
        self,
        redirect_uris: list[str],
        *,
        token_endpoint_auth_method: str = "client_secret_basic",
        **metadata: Any,
    ) -> tuple[str, str]:
        """Dynamic client registration (RFC 7591); returns ``(client_id, client_secret)``.

        ``token_endpoint_auth_method``: ``client_secret_basic`` or ``client_secret_post``
        (the provider only accepts the registered one). Extra ``metadata`` is sent as is.
        """
        body = {
            "redirect_uris": list(redirect_uris),
            "response_types": ["code"],
            "grant_types": ["authorization_code"],
            "token_endpoint_auth_method": token_endpoint_auth_method,
            **metadata,
        }
        with _http() as http:
            response = http.post(f"{self.issuer}/reg", json=body)
        if response.status_code != 201:
            raise RuntimeError(
                f"client registration refused: {response.status_code} {response.text}"
            )
        data = response.json()
        return str(data["client_id"]), str(data["client_secret"])

    def add_account(
        self,
        sub: str,
        email: str | None,
        email_verified: bool = True,
        preferred_username: str | None = None,
        name: str | None = None,
    ) -> None:
        """Create or replace an account; the login page takes ``sub`` or ``preferred_username``."""
        body = {
            "sub": sub,
            "email": email,
            "email_verified": email_verified,
            "preferred_username": preferred_username,
            "name": name,
        }
        with _http() as http:
            response = http.post(f"{self.issuer}/__test/accounts", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"account refused: {response.status_code} {response.text}")

    def authorize_url(
        self,
        client_id: str,
        redirect_uri: str,
        *,
        state: str,
        code_challenge: str,
        nonce: str | None = None,
        scope: str = "openid email profile",
        **extra: str,
    ) -> str:
        """An authorization request URL (code flow, PKCE S256); ``extra``: e.g. prompt="login"."""
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            **({"nonce": nonce} if nonce else {}),
            **extra,
        }
        return f"{self.issuer}/auth?{urlencode(params)}"


def start_oidc_provider(port: int | None = None, state_dir: Path | None = None) -> OIDCProvider:
    """A running provider (free port unless given); call ``stop()`` when done."""
    provider = OIDCProvider(port, state_dir)
    provider.start()
    return provider


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    """One real OpenID Connect provider per test session (per xdist worker)."""
    provider = start_oidc_provider(state_dir=tmp_path_factory.mktemp("oidc-provider"))
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def github_standin() -> Iterator[GitHubStandin]:
    """One GitHub stand-in per test session (per xdist worker)."""
    standin = start_github_standin()
    try:
        yield standin
    finally:
        standin.stop()


# ---- playing the user ----


class _Forms(HTMLParser):
    """The forms of a page: action, method, inputs and submit buttons; and whether #error shows."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id") == "error":
            self.error = True
        if tag == "form":
            self.forms.append(
                {
                    "action": a.get("action", ""),
                    "method": a.get("method", "get").upper(),
                    "inputs": [],
                    "buttons": [],
                }
            )
        elif self.forms and tag == "input" and a.get("name"):
            self.forms[-1]["inputs"].append(a)
        elif self.forms and tag == "button" and a.get("type", "submit") == "submit":
            self.forms[-1]["buttons"].append(a)


def _endpoint(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path


def _redirect_uri_of(url: str) -> str | None:
    return dict(parse_qsl(urlsplit(url).query)).get("redirect_uri")


ACCEPT_BUTTONS = ("signin", "authorize")
DENY_BUTTONS = ("deny", "cancel")


async def follow_to_callback(
    http: httpx.AsyncClient, authorize_url: str, login: str, *, deny: bool = False
) -> str:
    """Play the user from ``authorize_url`` and return the URL sent to the RP's redirect_uri.

    Follows redirects by hand (the client keeps the provider's cookies), fills
    ``input[name=login]`` and presses Sign in/Authorize (or Deny/Cancel with ``deny=True``) on
    the OIDC provider's or the GitHub stand-in's page, and stops at the first redirect to the
    ``redirect_uri`` of the authorization request, which is not requested. ``authorize_url``
    may also be a relying party URL that redirects to the provider (e.g. a "sign in with"
    link): its cookies then stay in ``http`` too. Raises ``AssertionError`` when the provider
    shows an error page, refuses the login, or (``deny=True``) skips the page because its
    session already signed the user in.
    """
    redirect_uri = _redirect_uri_of(authorize_url)
    method, url, data = "GET", authorize_url, None
    shown_page = False
    for _ in range(30):
        redirect_uri = redirect_uri or _redirect_uri_of(url)
        response = await http.request(method, url, data=data, follow_redirects=False)
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if redirect_uri is not None and _endpoint(location) == _endpoint(redirect_uri):
                if deny and not shown_page:
                    raise AssertionError(f"no page to deny: the provider signed in ({location})")
                return location
            method, url, data = "GET", location, None
            continue
        page = _Forms()
        page.feed(response.text)
        if response.status_code != 200 or not page.forms:
            raise AssertionError(
                f"provider answered {response.status_code} at {response.url}: {response.text[:800]}"
            )
        if shown_page and page.error:
            raise AssertionError(f"the provider refused the login {login!r}: {response.text[:800]}")
        form = page.forms[0]
        wanted = DENY_BUTTONS if deny else ACCEPT_BUTTONS
        button = next((b for b in form["buttons"] if b.get("id") in wanted), None)
        if button is None:
            raise AssertionError(f"no {wanted} button at {response.url}: {response.text[:800]}")
        fields = {i["name"]: i.get("value", "") for i in form["inputs"]}
        fields["login"] = login
        if button.get("name"):
            fields[button["name"]] = button.get("value", "")
        shown_page = True
        method = form["method"]
        url = urljoin(str(response.url), form["action"] or str(response.url))
        data = fields if method == "POST" else None
        if method != "POST":
            url = f"{url.split('?')[0]}?{urlencode(fields)}"
    raise AssertionError(f"too many steps from {authorize_url}")


def claims_of(id_token: str) -> dict[str, Any]:
    """The (unverified) payload of a JWT, for assertions in tests."""
    payload = id_token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
