"""``/login/mfa``: the second step of a page sign-in, for an account with MFA on.

``POST /login`` with the right password keeps the ``mfa_token`` in an HttpOnly cookie that
lives as long as the challenge (see ``authdb.http.cookies``) and sends the browser here. The
page asks for a code from the authenticator app, or with ``?method=recovery`` a recovery code;
both post to ``/login/mfa`` and run the same code as ``POST /token``'s MFA grant: wrong codes
count for the account's lockout, and five of them end the challenge.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from authdb import errors
from authdb.http.cookies import clear_mfa_cookie, read_mfa_cookie
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import retry_after
from authdb.http.pages.forms import REQUIRED, TOO_LONG, waiting_message
from authdb.http.pages.render import Pages, PageState, text
from authdb.http.pages.signin import refused_account, safe_landing, signed_in
from authdb.http.signin_alerts import checked_later
from authdb.services import passkey_login
from authdb.services.login import login_mfa_browser
from authdb.services.mfa import METHOD_RECOVERY_CODE, METHOD_TOTP

# The form field of each method; ``?method=recovery`` asks for the recovery code.
_FIELDS = {METHOD_TOTP: "code", METHOD_RECOVERY_CODE: "recovery_code"}
_RECOVERY_QUERY = "recovery"
_MAX_CHARS = 64  # as POST /token's otp and recovery_code


def _with_query(path: str, **params: str) -> str:
    kept = {name: value for name, value in params.items() if value}
    return f"{path}?{urlencode(kept)}" if kept else path


def add_routes(router: APIRouter, deps: AuthDeps, pages: Pages) -> None:
    """Add ``/login/mfa`` (the page and its form) to ``router``."""
    core, settings = deps.core, deps.core.settings

    async def code_form(
        request: Request,
        state: PageState,
        method: str,
        next_: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        here = pages.url(request, "login_mfa")
        mfa_token = read_mfa_cookie(request, settings)
        passkey = mfa_token is not None and await passkey_login.can_complete(core, mfa_token)
        landing = safe_landing(pages, next_) or ""
        return pages.render(
            request,
            state,
            "login_mfa",
            title="Two-factor authentication",
            status=status,
            method=method,
            next=next_,
            passkey_second_factor=passkey,
            method_links={
                METHOD_TOTP: _with_query(here, next=landing),
                METHOD_RECOVERY_CODE: _with_query(here, method=_RECOVERY_QUERY, next=landing),
            },
            **context,
        )

    def back_to_login(request: Request, state: PageState, next_: str, notice: str = "") -> Response:
        landing = safe_landing(pages, next_) or ""
        target = _with_query(pages.url(request, "login"), notice=notice, next=landing)
        response = pages.redirect(target, state)
        if read_mfa_cookie(request, settings) is not None:
            clear_mfa_cookie(response, settings)
        return response

    @router.get("/login/mfa", name="authdb_page_login_mfa")
    async def code_page(request: Request) -> Response:
        state = pages.state(request)
        next_ = request.query_params.get("next", "")
        if read_mfa_cookie(request, settings) is None:
            return back_to_login(request, state, next_)
        recovery = request.query_params.get("method") == _RECOVERY_QUERY
        method = METHOD_RECOVERY_CODE if recovery else METHOD_TOTP
        return await code_form(request, state, method, next_)

    @router.post("/login/mfa")
    async def code_submit(request: Request) -> Response:
        state, form = await pages.posted(request)
        next_ = text(form, "next")
        mfa_token = read_mfa_cookie(request, settings)
        if mfa_token is None:  # the cookie outlives no challenge: it has expired
            return back_to_login(request, state, next_, "mfa_expired")
        method = METHOD_RECOVERY_CODE if _FIELDS[METHOD_RECOVERY_CODE] in form else METHOD_TOTP
        field = _FIELDS[method]
        code = text(form, field).strip()
        problem = REQUIRED if not code else TOO_LONG if len(code) > _MAX_CHARS else None
        if problem:
            return await code_form(
                request, state, method, next_, status=422, errors={field: problem}
            )
        try:
            browser = await login_mfa_browser(
                core,
                deps.limits,
                mfa_token,
                deps.client_resolver(request),
                otp=code if method == METHOD_TOTP else None,
                recovery_code=code if method == METHOD_RECOVERY_CODE else None,
            )
        # InvalidMFAToken and MFALoginFailed are both InvalidCredentials: order matters.
        except errors.InvalidMFAToken:
            return back_to_login(request, state, next_, "mfa_expired")
        except errors.MFALoginFailed as exc:
            return await code_form(
                request, state, method, next_, status=401, errors={field: exc.detail}
            )
        except errors.TooManyRequests as exc:
            return await code_form(
                request,
                state,
                method,
                next_,
                status=429,
                error=waiting_message(exc),
                headers=retry_after(exc),
            )
        except (errors.InactiveUser, errors.EmailNotVerified) as exc:
            response = refused_account(pages, request, state, exc, next=next_)
            clear_mfa_cookie(response, settings)
            return response
        response = await signed_in(core, pages, request, browser, next_)
        return checked_later(response, deps, browser.session_id)
