"""Pages for signing in and out, registering, and following emailed links (the second step
of a sign-in with MFA is ``signin_mfa``).

A GET never spends a token: ``/verify?token=`` and ``/reset-password?token=`` show a form that
POSTs it, because mail scanners follow links.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.background import BackgroundTasks
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from authdb import errors
from authdb.http.cookies import (
    clear_mfa_cookie,
    clear_session_cookie,
    read_mfa_cookie,
    read_session_cookie,
    set_mfa_cookie,
    set_session_cookie,
)
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import retry_after
from authdb.http.mailing import Prepare, prepare_and_send, send_later
from authdb.http.pages.forms import field_of, parse, waiting_message
from authdb.http.pages.render import Pages, PageState, text
from authdb.http.redirects import safe_next
from authdb.http.routers.accounts import RESET_ACCEPTED, VERIFY_ACCEPTED
from authdb.http.schemas import EmailRequest, PasswordReset, TokenRequest, UserCreate
from authdb.http.signin_alerts import checked_later
from authdb.services import accounts, sessions
from authdb.services.core import Core
from authdb.services.login import login_browser
from authdb.services.sessions import BrowserSession
from authdb.tokens import hash_opaque_token

# The same caps as POST /token's form fields.
_MAX_CHARS = {"username": 1024, "password": 4096}


def _login_field_problems(form: FormData) -> dict[str, str]:
    problems = {}
    for name, limit in _MAX_CHARS.items():
        value = text(form, name)
        if not value:
            problems[name] = "This field is required."
        elif len(value) > limit:
            problems[name] = "This is too long."
    return problems


def safe_landing(pages: Pages, candidate: str) -> str | None:
    """``candidate`` if it may follow a sign-in (a path here or an allowed origin), else None."""
    settings = pages.settings
    return safe_next(
        candidate,
        public_url=settings.public_url,
        allowed_origins=settings.allowed_redirect_origins,
    )


def login_form(
    pages: Pages, request: Request, state: PageState, *, status: int = 200, **context: Any
) -> Response:
    """The sign-in page; ``next`` defaults to the query's."""
    context.setdefault("next", request.query_params.get("next", ""))
    return pages.render(
        request,
        state,
        "login",
        title="Sign in",
        status=status,
        notice=pages.notice(request),
        **context,
    )


def refused_account(
    pages: Pages,
    request: Request,
    state: PageState,
    exc: errors.InactiveUser | errors.EmailNotVerified,
    **context: Any,
) -> Response:
    """The sign-in page saying why a right password (and code) still may not sign in."""
    unverified = isinstance(exc, errors.EmailNotVerified)
    message = (
        "Verify your email address first: follow the link we sent you."
        if unverified
        else "This account is disabled."
    )
    return login_form(
        pages,
        request,
        state,
        status=400,
        error=message,
        resend_verification=unverified,
        **context,
    )


async def signed_in(
    core: Core, pages: Pages, request: Request, browser: BrowserSession, next_: str
) -> Response:
    """The end of a sign-in, with or without a second factor: the session cookie (ending the
    session a cookie this browser already had), a CSRF token bound to it, then ``next``."""
    settings = pages.settings
    replaced = read_session_cookie(request, settings)
    if replaced is not None:
        await sessions.end_replaced_cookie(core, replaced)
    landing = safe_landing(pages, next_) or pages.url(request, "account")
    response = pages.redirect(landing, pages.state_for(hash_opaque_token(browser.cookie)))
    set_session_cookie(response, settings, browser)
    if read_mfa_cookie(request, settings) is not None:
        clear_mfa_cookie(response, settings)
    return response


def to_second_factor(
    pages: Pages, request: Request, state: PageState, mfa_token: str, next_: str
) -> Response:
    """The password was right and MFA is on: on to ``/login/mfa``, the ``mfa_token`` in its
    cookie (never in the URL or a page); ``next`` goes along only if it is safe."""
    target = pages.url(request, "login_mfa")
    landing = safe_landing(pages, next_)
    if landing:
        target += "?" + urlencode({"next": landing})
    response = pages.redirect(target, state)
    set_mfa_cookie(response, pages.settings, mfa_token)
    return response


def add_routes(
    router: APIRouter,
    form_router: APIRouter,
    deps: AuthDeps,
    pages: Pages,
    *,
    register: bool = True,
) -> None:
    """Add the sign-in pages to ``router``; POSTs sharing an API path go on ``form_router``.
    Without ``register``, no ``/register`` page."""
    core, settings = deps.core, deps.core.settings

    @router.get("/login", name="authdb_page_login")
    async def login_page(request: Request) -> Response:
        return login_form(pages, request, pages.state(request))

    @router.post("/login")
    async def login_submit(request: Request) -> Response:
        state, form = await pages.posted(request)
        username, next_ = text(form, "username"), text(form, "next")
        values = {"username": username}
        problems = _login_field_problems(form)
        if problems:
            if "username" in problems:
                values = {}  # never echo a megabyte back
            return login_form(
                pages, request, state, status=422, errors=problems, values=values, next=next_
            )
        try:
            browser = await login_browser(
                core, deps.limits, username, text(form, "password"), deps.client_resolver(request)
            )
        except errors.MFARequired as exc:
            return to_second_factor(pages, request, state, exc.mfa_token, next_)
        except errors.TooManyRequests as exc:
            return login_form(
                pages,
                request,
                state,
                status=429,
                error=waiting_message(exc),
                values=values,
                next=next_,
                headers=retry_after(exc),
            )
        except (errors.InvalidCredentials, errors.InvalidInput):
            return login_form(
                pages,
                request,
                state,
                status=401,
                error=errors.InvalidCredentials.detail,
                values=values,
                next=next_,
            )
        except (errors.InactiveUser, errors.EmailNotVerified) as exc:
            return refused_account(pages, request, state, exc, values=values, next=next_)
        response = await signed_in(core, pages, request, browser, next_)
        return checked_later(response, deps, browser.session_id)

    @form_router.post("/logout", name="authdb_page_logout")
    async def logout_submit(request: Request) -> Response:
        await pages.posted(request, back=pages.url(request, "account"))
        auth = await deps.optional_session(request)
        if auth is not None:
            await sessions.logout(core, auth, deps.client_resolver(request))
        elif (cookie := read_session_cookie(request, settings)) is not None:
            await sessions.end_replaced_cookie(core, cookie)  # e.g. a disabled account's
        target = pages.url(request, "login") + "?notice=signed_out"
        response = pages.redirect(target, pages.signed_out_state())
        clear_session_cookie(response, settings)
        return response

    def register_form(
        request: Request, state: PageState, *, status: int = 200, **context: Any
    ) -> Response:
        if not settings.registration_enabled:
            return pages.render(
                request,
                state,
                "message",
                title="Registration closed",
                status=403,
                error=errors.RegistrationClosed.detail,
                link={"href": pages.url(request, "login"), "text": "Sign in"},
            )
        return pages.render(
            request, state, "register", title="Create an account", status=status, **context
        )

    async def register_page(request: Request) -> Response:
        return register_form(request, pages.state(request))

    async def register_submit(request: Request) -> Response:
        state, form = await pages.posted(request)
        if not settings.registration_enabled:
            return register_form(request, state)
        values = {n: text(form, n) for n in ("username", "email", "full_name")}
        body, problems = parse(
            UserCreate,
            {
                **values,
                "password": text(form, "password"),
                "full_name": values["full_name"] or None,
            },
        )
        if body is None:
            return register_form(request, state, status=422, errors=problems, values=values)
        try:
            _user, mail = await accounts.register(
                core,
                deps.limits,
                username=body.username,
                email=str(body.email),
                password=body.password,
                full_name=body.full_name,
                client=deps.client_resolver(request),
            )
        except errors.TooManyRequests as exc:
            return register_form(
                request,
                state,
                status=429,
                error=waiting_message(exc),
                values=values,
                headers=retry_after(exc),
            )
        except (errors.InvalidInput, errors.Conflict) as exc:
            status = 409 if isinstance(exc, errors.Conflict) else 422
            problem = {field_of(exc, "username"): exc.detail}
            return register_form(request, state, status=status, errors=problem, values=values)
        response = pages.redirect(pages.url(request, "login") + "?notice=registered", state)
        response.background = BackgroundTasks()
        send_later(response.background, deps.mailer, [mail])
        return response

    if register:
        router.add_api_route(
            "/register", register_page, methods=["GET"], name="authdb_page_register"
        )
        form_router.add_api_route("/register", register_submit, methods=["POST"])

    @router.get("/forgot-password", name="authdb_page_forgot_password")
    async def forgot_page(request: Request) -> Response:
        return pages.render(
            request, pages.state(request), "forgot_password", title="Forgot your password?"
        )

    async def mail_request(
        request: Request,
        state: PageState,
        form: FormData,
        prepare: Prepare,
        page: tuple[str, str],
        accepted: str,
    ) -> Response:
        """A "mail me a link" form: the same answer whether or not the address has an
        account; the lookup and the mail happen after the answer (see http.mailing)."""
        template, title = page
        values = {"email": text(form, "email")}
        body, problems = parse(EmailRequest, values)
        if body is None:
            return pages.render(
                request,
                state,
                template,
                title=title,
                status=422,
                errors=problems,
                values=values,
                token="",
            )
        client = deps.client_resolver(request)
        try:
            await accounts.spend_email_budgets(core, deps.limits, client, body.email)
        except errors.TooManyRequests as exc:
            return pages.render(
                request,
                state,
                template,
                title=title,
                status=429,
                error=waiting_message(exc),
                values=values,
                token="",
                headers=retry_after(exc),
            )
        background = BackgroundTasks()
        background.add_task(prepare_and_send, core, deps.mailer, prepare, body.email, client)
        response = pages.render(
            request,
            state,
            "message",
            title="Check your email",
            notice=pages.mail_notice(accepted),
            link={"href": pages.url(request, "login"), "text": "Back to sign in"},
        )
        response.background = background
        return response

    @router.post("/forgot-password")
    async def forgot_submit(request: Request) -> Response:
        state, form = await pages.posted(request)
        return await mail_request(
            request,
            state,
            form,
            accounts.request_password_reset,
            ("forgot_password", "Forgot your password?"),
            RESET_ACCEPTED,
        )

    def reset_form(
        request: Request, state: PageState, token: str, *, status: int = 200, **context: Any
    ) -> Response:
        return pages.render(
            request,
            state,
            "reset_password",
            title="Choose a new password",
            status=status,
            token=token,
            **context,
        )

    def bad_link(request: Request, state: PageState, retry: str) -> Response:
        return pages.render(
            request,
            state,
            "message",
            title="Link expired",
            status=400,
            error="This link is invalid, has expired or has already been used.",
            link={"href": pages.url(request, retry), "text": "Ask for a new link"},
        )

    @router.get("/reset-password", name="authdb_page_reset_password")
    async def reset_page(request: Request) -> Response:
        return reset_form(request, pages.state(request), request.query_params.get("token", ""))

    @router.post("/reset-password")
    async def reset_submit(request: Request) -> Response:
        state, form = await pages.posted(request)
        token, password = text(form, "token"), text(form, "password")
        if password != text(form, "password_confirm"):
            return reset_form(
                request,
                state,
                token,
                status=422,
                errors={"password_confirm": "The passwords do not match."},
            )
        body, problems = parse(PasswordReset, {"token": token, "password": password})
        if body is None:
            if "token" in problems:
                return bad_link(request, state, "forgot_password")
            return reset_form(request, state, token, status=422, errors=problems)
        try:
            await accounts.reset_password(
                core, body.token, body.password, deps.client_resolver(request)
            )
        except errors.InvalidEmailToken:
            return bad_link(request, state, "forgot_password")
        except errors.InvalidInput as exc:
            return reset_form(
                request, state, token, status=422, errors={field_of(exc, "password"): exc.detail}
            )
        return pages.redirect(pages.url(request, "login") + "?notice=password_reset", state)

    @router.get("/verify", name="authdb_page_verify")
    async def verify_page(request: Request) -> Response:
        return pages.render(
            request,
            pages.state(request),
            "verify",
            title="Verify your email address",
            token=request.query_params.get("token", ""),
        )

    @form_router.post("/verify")
    async def verify_submit(request: Request) -> Response:
        state, form = await pages.posted(request)
        if not text(form, "token") and "email" in form:  # the "send a new link" form
            return await mail_request(
                request,
                state,
                form,
                accounts.request_verification,
                ("verify", "Verify your email address"),
                VERIFY_ACCEPTED,
            )
        body, _problems = parse(TokenRequest, {"token": text(form, "token")})
        if body is None:
            return bad_link(request, state, "verify")
        auth = await deps.optional_session(request)
        try:
            await accounts.verify_email(
                core,
                body.token,
                deps.client_resolver(request),
                signed_in_as=auth.user.id if auth is not None else None,
            )
        except errors.InvalidEmailToken:
            return bad_link(request, state, "verify")
        signed_in = auth is not None
        target = "account" if signed_in else "login"
        return pages.render(
            request,
            state,
            "message",
            title="Email verified",
            notice="Your email address is verified.",
            link={
                "href": pages.url(request, target),
                "text": "Go to your account" if signed_in else "Sign in",
            },
        )
