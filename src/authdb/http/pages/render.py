"""Rendering pages: templates, the context every page gets, CSRF cookies and page headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from authdb.http.cookies import read_session_cookie, set_csrf_cookie
from authdb.http.csrf import ANONYMOUS, CSRF_COOKIE, CSRF_FIELD, CSRFTokens
from authdb.mail import template_environment
from authdb.settings import Settings
from authdb.tokens import hash_opaque_token

# Route names of the pages, as the templates' ``paths`` keys.
PATH_NAMES = (
    "css",
    "login",
    "register",
    "forgot_password",
    "reset_password",
    "verify",
    "account",
    "logout",
    "account_profile",
    "account_email",
    "account_password",
    "account_delete",
    "account_sessions",
)

# Short codes in ``?notice=`` after a redirect; only these fixed texts are ever shown.
NOTICES = {
    "registered": "Your account is ready. We sent a link to your email address to verify it.",
    "password_reset": "Your password has been changed. Sign in with the new one.",
    "signed_out": "You are signed out.",
    "account_deleted": "Your account has been deleted.",
    "profile_saved": "Your profile has been saved.",
    "email_pending": "Check your new address: the change takes effect when you follow the link "
    "we sent to it.",
    "password_changed": "Your password has been changed. Your other sessions were signed out.",
    "session_revoked": "That session has been signed out.",
}

# No script at all; styles and images from this origin only; no framing (clickjacking).
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'{extra}; frame-ancestors 'none'; base-uri 'none'"
)
MAX_FORM_FIELDS = 16


@dataclass
class PageState:
    """What one request renders with: its CSRF binding and token, and cookies to set."""

    binding: str
    csrf_token: str
    new_csrf: bool


class Pages:
    """Templates and per-request page plumbing, bound to one deployment's settings.

    ``csrf`` gives the token mint, which exists once the deployment secret is loaded.
    """

    def __init__(self, settings: Settings, csrf: Callable[[], CSRFTokens]) -> None:
        self.settings = settings
        self._csrf = csrf
        self.templates = template_environment(settings.templates_dir)
        origins = " ".join(settings.allowed_redirect_origins)
        self.csp = _CSP.format(extra=f" {origins}" if origins else "")

    @property
    def csrf(self) -> CSRFTokens:
        return self._csrf()

    def state(self, request: Request) -> PageState:
        """The request's CSRF binding (its session cookie, if any) and a token for it: the
        browser's own if it is bound right, else a new one (set by ``finish``)."""
        cookie = read_session_cookie(request, self.settings)
        binding = hash_opaque_token(cookie) if cookie else ANONYMOUS
        return self.state_for(binding, request.cookies.get(CSRF_COOKIE))

    def state_for(self, binding: str, current: str | None = None) -> PageState:
        if current is not None and self.csrf.bound_to(current, binding):
            return PageState(binding, current, new_csrf=False)
        return PageState(binding, self.csrf.mint(binding), new_csrf=True)

    def csrf_ok(self, request: Request, form: FormData, state: PageState) -> bool:
        """The form's token matches the CSRF cookie and is bound to this browser's session."""
        presented = form.get(CSRF_FIELD)
        return self.csrf.check(
            request.cookies.get(CSRF_COOKIE),
            presented if isinstance(presented, str) else None,
            state.binding,
        )

    def url(self, request: Request, name: str) -> str:
        """A page's path, under the mount point and prefix the router was included with."""
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return root + str(request.app.url_path_for(f"authdb_page_{name}"))

    def render(
        self,
        request: Request,
        state: PageState,
        template: str,
        *,
        title: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> Response:
        """``pages/<template>.html`` with the shared context (see the pages contract)."""
        values = {
            "site_name": self.settings.site_name,
            "title": title,
            "csrf_token": state.csrf_token,
            "paths": {name: self.url(request, name) for name in PATH_NAMES},
            "notice": None,
            "error": None,
            "errors": {},
            "values": {},
            "form": None,
            "registration_enabled": self.settings.registration_enabled,
            "signed_in": False,
            **context,
        }
        html = self.templates.get_template(f"pages/{template}.html").render(values)
        response = HTMLResponse(html, status_code=status, headers=dict(headers or {}))
        return self.finish(response, state)

    def redirect(self, url: str, state: PageState | None = None) -> RedirectResponse:
        """303 See Other: after a POST, the browser GETs ``url``."""
        response = RedirectResponse(url, status_code=303)
        if state is not None:
            self.finish(response, state)
        return response

    def finish(self, response: Response, state: PageState) -> Response:
        if state.new_csrf:
            set_csrf_cookie(response, self.settings, state.csrf_token)
        response.headers["Content-Security-Policy"] = self.csp
        response.headers["Cache-Control"] = "no-store"
        return response


def notice_of(request: Request) -> str | None:
    """The fixed text for ``?notice=CODE``; unknown codes show nothing (no reflected text)."""
    return NOTICES.get(request.query_params.get("notice", ""))


async def read_form(request: Request) -> FormData:
    """The submitted form, bounded in fields; no file uploads."""
    return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)


def text(form: FormData, name: str) -> str:
    """A form field as text ('' when absent or not text)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""
