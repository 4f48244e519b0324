"""Rendering pages: templates, the context every page gets, CSRF cookies and page headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import NoMatchFound

from authdb import relying_party
from authdb.errors import CSRFFailed, InvalidInput
from authdb.http.cookies import (
    read_presession_cookie,
    read_session_cookie,
    set_csrf_cookie,
    set_presession_cookie,
)
from authdb.http.csrf import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, CSRFTokens
from authdb.mail import template_environment
from authdb.settings import Settings
from authdb.tokens import hash_opaque_token, new_opaque_token

# Route names of the pages, as the templates' ``paths`` keys.
PATH_NAMES = (
    "css",
    "login",
    "login_mfa",
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
    "account_mfa_setup",
    "account_mfa_confirm",
    "account_mfa_recovery_codes",
    "account_mfa_disable",
    "account_passkeys",
    "passkeys_js",
    "login_passkey",
    "login_mfa_passkey",
    "account_oauth",
)

# The API routes the passkey script calls (``authdb.http.routers.passkeys``), by template key.
_PASSKEY_API = {
    "login_options": "authdb_passkey_login_options",
    "register_options": "authdb_passkey_options",
    "register": "authdb_passkey_register",
}

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
    "mfa_expired": "Your sign-in expired; please sign in again.",
    "mfa_disabled": "Two-factor authentication is off. Signing in needs only your password now.",
    "passkey_added": "Your passkey has been added.",
    "passkey_removed": "The passkey has been removed.",
    "oauth_linked": "The provider has been linked: you can sign in with it now.",
    "oauth_unlinked": "The provider has been unlinked.",
}

_LOGGED_MAIL = "(No mail server is configured here: the email was written to the server's log.)"
# The notices that say a mail was sent.
_MAIL_NOTICES = frozenset({"registered", "email_pending"})

# Scripts (the passkey script only), requests, styles and images from this origin only; no
# inline script or style; no framing (clickjacking).
_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
    "img-src 'self' data:; "
    "form-action 'self'{extra}; frame-ancestors 'none'; base-uri 'none'"
)
MAX_FORM_FIELDS = 16


class FormRefused(CSRFFailed):
    """A page form without a valid CSRF token; ``back`` is the page to reload."""

    def __init__(self, back: str | None = None) -> None:
        super().__init__()
        self.back = back


@dataclass
class PageState:
    """What one request renders with: its CSRF binding and token, and cookies to set."""

    binding: str
    csrf_token: str
    new_csrf: bool
    # A new pre-session cookie value to set, if the browser had none.
    presession: str | None = None


class Pages:
    """Templates and per-request page plumbing, bound to one deployment's settings.

    ``csrf`` gives the token mint, which exists once the deployment secret is loaded.
    ``mail_logged``: whether mails go to the log (default: when AUTHDB_SMTP_HOST is unset;
    ``Auth`` says, since an application's email sender delivers without SMTP).
    """

    def __init__(
        self,
        settings: Settings,
        csrf: Callable[[], CSRFTokens],
        *,
        mail_logged: bool | None = None,
    ) -> None:
        self.settings = settings
        self._csrf = csrf
        self.mail_logged = not settings.smtp_host if mail_logged is None else mail_logged
        self.templates = template_environment(settings.templates_dir)
        # Where forms may send the browser besides this origin (CSP form-action also governs
        # a form's redirects): the allowed ``next`` origins, and the sign-in providers.
        self._form_targets: list[Callable[[], list[str]]] = [
            lambda: list(settings.allowed_redirect_origins)
        ]
        # ``{name, label, href}`` of each provider's sign-in link, given the page and ``next``
        # (set when sign-in with providers is mounted).
        self.sign_in_with: Callable[[Request, str], list[dict[str, str]]] | None = None

    def add_form_targets(self, origins: Callable[[], list[str]]) -> None:
        """Let forms lead to ``origins()`` too (read at each page, so a late discovery counts)."""
        self._form_targets.append(origins)

    @property
    def csp(self) -> str:
        """The pages' Content-Security-Policy."""
        targets = dict.fromkeys(o for found in self._form_targets for o in found())
        return _CSP.format(extra="".join(f" {origin}" for origin in targets))

    @property
    def csrf(self) -> CSRFTokens:
        return self._csrf()

    def state(self, request: Request) -> PageState:
        """The request's CSRF binding and a token for it: the browser's own if it is bound
        right, else a new one (set by ``finish``). The binding is the session cookie, or
        before sign-in the pre-session cookie (a new one if the browser has none)."""
        current = request.cookies.get(CSRF_COOKIE)
        cookie = read_session_cookie(request, self.settings)
        if cookie:
            return self.state_for(hash_opaque_token(cookie), current)
        presession = read_presession_cookie(request, self.settings)
        if not presession:
            return self.signed_out_state()
        return self.state_for(_presession_binding(presession), current)

    def state_for(self, binding: str, current: str | None = None) -> PageState:
        if current is not None and self.csrf.bound_to(current, binding):
            return PageState(binding, current, new_csrf=False)
        return PageState(binding, self.csrf.mint(binding), new_csrf=True)

    def signed_out_state(self) -> PageState:
        """A fresh pre-session and token: for a new browser, and after signing out."""
        presession = new_opaque_token()
        binding = _presession_binding(presession)
        return PageState(binding, self.csrf.mint(binding), new_csrf=True, presession=presession)

    def csrf_ok(self, request: Request, form: FormData, state: PageState) -> bool:
        """The form's token matches the CSRF cookie and is bound to this browser's session,
        and the browser does not say the form came from another site (``Sec-Fetch-Site``)."""
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return False
        presented = form.get(CSRF_FIELD)
        return self.csrf.check(
            request.cookies.get(CSRF_COOKIE),
            presented if isinstance(presented, str) else None,
            state.binding,
        )

    def csrf_header_ok(self, request: Request, state: PageState) -> bool:
        """``csrf_ok`` for a script's JSON request: the token in the ``X-CSRF-Token`` header."""
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return False
        return self.csrf.check(
            request.cookies.get(CSRF_COOKIE), request.headers.get(CSRF_HEADER), state.binding
        )

    def notice(self, request: Request) -> str | None:
        """The fixed text for ``?notice=CODE``; unknown codes show nothing (no reflected text)."""
        code = request.query_params.get("notice", "")
        text = NOTICES.get(code)
        return self.mail_notice(text) if text and code in _MAIL_NOTICES else text

    def mail_notice(self, text: str) -> str:
        """``text`` about a mail sent, plus where it went when no mail server is configured."""
        if not self.mail_logged:
            return text
        return f"{text} {_LOGGED_MAIL}"

    async def posted(self, request: Request, back: str | None = None) -> tuple[PageState, FormData]:
        """The request's page state and submitted form, once its CSRF token checks out.

        Raises FormRefused (a 403 page linking to ``back``, default this path) otherwise.
        """
        state = self.state(request)
        form = await read_form(request)
        if not self.csrf_ok(request, form, state):
            raise FormRefused(back)
        return state, form

    def refused(self, request: Request, state: PageState, back: str) -> Response:
        """403 for a form without a valid CSRF token. It sets no cookie: a cross-site post
        (which arrives without the browser's SameSite cookies) must not replace the CSRF
        cookie of a page the user has open."""
        quiet = replace(state, new_csrf=False, presession=None)
        return self.render(
            request,
            quiet,
            "error",
            title="Request refused",
            status=403,
            error=CSRFFailed.detail,
            link={"href": back, "text": "Reload the page and try again"},
        )

    def url(self, request: Request, name: str) -> str:
        """A page's path, under the mount point and prefix the router was included with."""
        return self._path(request, f"authdb_page_{name}")

    def paths(self, request: Request) -> dict[str, str]:
        """The paths of the pages this app serves, by ``PATH_NAMES`` key."""
        found = {}
        for name in PATH_NAMES:
            try:
                found[name] = self.url(request, name)
            except NoMatchFound:
                continue  # left out by Auth(features=...)
        return found

    @staticmethod
    def _path(request: Request, route_name: str, **params: str) -> str:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return root + str(request.app.url_path_for(route_name, **params))

    def route_path(self, request: Request, route_name: str, **params: str) -> str:
        """The path of route ``route_name`` with its path ``params``, under the mount point."""
        return self._path(request, route_name, **params)

    def passkey_api(self, request: Request) -> dict[str, str] | None:
        """The passkey API paths the pages' script calls and the relying party's ``origin``, or
        None when passkeys cannot work here (an IP-address ``PUBLIC_URL``, the extra missing,
        or the API not mounted)."""
        if not relying_party.available(self.settings):
            return None
        try:
            paths = {key: self._path(request, name) for key, name in _PASSKEY_API.items()}
            self._path(request, "authdb_page_passkeys_js")  # the pages' half is there too
        except NoMatchFound:
            return None
        # Passkeys work only at this origin: the script says so on a page opened at another.
        return {**paths, "origin": relying_party.relying_party(self.settings).origin}

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
        """``pages/<template>.html`` with the shared context (see the pages contract).

        ``paths`` holds only the pages the app serves: a section whose feature is off
        (``Auth(features=...)``) is left out by its template.
        """
        paths = self.paths(request)
        values = {
            "site_name": self.settings.site_name,
            "title": title,
            "csrf_token": state.csrf_token,
            "paths": paths,
            "notice": None,
            "error": None,
            "errors": {},
            "values": {},
            "form": None,
            # Open, and the page there (``Auth(features={"register": False})`` leaves it out).
            "registration_enabled": self.settings.registration_enabled and "register" in paths,
            "signed_in": False,
            "passkey_api": self.passkey_api(request),
            "sign_in_with": self._sign_in_with(request, template, context),
            **context,
        }
        html = self.templates.get_template(f"pages/{template}.html").render(values)
        response = HTMLResponse(html, status_code=status, headers=dict(headers or {}))
        return self.finish(response, state)

    def _sign_in_with(
        self, request: Request, template: str, context: Mapping[str, Any]
    ) -> list[dict[str, str]]:
        if self.sign_in_with is None or template not in ("login", "register"):
            return []
        next_ = context.get("next") or request.query_params.get("next", "")
        return self.sign_in_with(request, str(next_)[:2048])

    def redirect(self, url: str, state: PageState | None = None) -> RedirectResponse:
        """303 See Other: after a POST, the browser GETs ``url``."""
        response = RedirectResponse(url, status_code=303)
        if state is not None:
            self.finish(response, state)
        return response

    def finish(self, response: Response, state: PageState) -> Response:
        if state.presession is not None:
            set_presession_cookie(response, self.settings, state.presession)
        if state.new_csrf:
            set_csrf_cookie(response, self.settings, state.csrf_token)
        response.headers["Content-Security-Policy"] = self.csp
        response.headers["Cache-Control"] = "no-store"
        return response


def _presession_binding(presession: str) -> str:
    # Prefixed, so that no session cookie's hash can ever equal a pre-session binding.
    return "presession:" + hash_opaque_token(presession)


async def read_form(request: Request) -> FormData:
    """The submitted form, bounded in fields; no file uploads.

    Raises InvalidInput (an error page, 422) for a form that cannot be read or is too big.
    """
    try:
        return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    except HTTPException:
        raise InvalidInput("The form could not be read") from None


def text(form: FormData, name: str) -> str:
    """A form field as text ('' when absent or not text)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""
