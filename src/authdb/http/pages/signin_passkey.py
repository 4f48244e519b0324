"""Signing in with a passkey from the pages' script: ``POST /login/passkey`` (the passkey
alone) and ``POST /login/mfa/passkey`` (the passkey as the second factor).

The script sends JSON ``{flow_id, credential, next}`` with the ``X-CSRF-Token`` header bound
to the browser's pre-session, and gets ``{"redirect": url}`` back with the cookies a form
sign-in would set (the session, or the MFA step's), or ``{"detail"}`` with the failure's
status. The checks are those of ``POST /passkeys/login``: failures count for lockout.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authdb import errors
from authdb.http.cookies import clear_mfa_cookie, read_mfa_cookie
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import retry_after
from authdb.http.pages.forms import waiting_message
from authdb.http.pages.render import Pages, PageState
from authdb.http.pages.signin import safe_landing, signed_in, to_second_factor
from authdb.http.schemas import Text
from authdb.http.signin_alerts import checked_later
from authdb.services import passkey_login

# The page's words for a failed passkey: the common case is one removed from the account (the
# device still offers it). The same for every failure: they must not tell which it was.
PASSKEY_FAILED = (
    "That passkey did not work here: it may have been removed from your account. "
    "Sign in with your password instead."
)
# What the script is told in words of its own (the rest answer as the API does).
_REFUSALS = (
    errors.InvalidPasskey,
    errors.TooManyRequests,
    errors.InactiveUser,
    errors.EmailNotVerified,
)
_REFUSED = {
    errors.EmailNotVerified: "Verify your email address first: follow the link we sent you.",
    errors.InactiveUser: "This account is disabled.",
}


class _Answer(BaseModel):
    flow_id: Text = Field(max_length=4096)
    credential: dict[str, Any]
    next: Text = Field("", max_length=2048)


def as_json(redirect: Response) -> JSONResponse:
    """A page's 303 for a script: ``{"redirect": location}`` with the same cookies."""
    answer = JSONResponse({"redirect": redirect.headers["location"]})
    for name, value in redirect.raw_headers:
        if name.lower() in (b"set-cookie", b"content-security-policy", b"cache-control"):
            answer.raw_headers.append((name, value))
    return answer


def add_routes(router: APIRouter, deps: AuthDeps, pages: Pages) -> None:
    """Add the two JSON endpoints to ``router`` (a router of JSON errors, not error pages)."""
    core, settings = deps.core, deps.core.settings

    async def read(request: Request) -> tuple[PageState, _Answer]:
        state = pages.state(request)
        if not pages.csrf_header_ok(request, state):
            raise errors.CSRFFailed
        try:
            return state, _Answer.model_validate_json(await request.body())
        except ValidationError:
            raise errors.InvalidInput("Malformed passkey answer", field="credential") from None

    def refused(exc: errors.AuthError) -> JSONResponse:
        if isinstance(exc, errors.TooManyRequests):
            body, status = {"detail": waiting_message(exc)}, 429
        elif isinstance(exc, errors.InvalidPasskey):
            body, status = {"detail": PASSKEY_FAILED}, 401
        else:
            body, status = {"detail": _REFUSED.get(type(exc), exc.detail)}, 400
        return JSONResponse(body, status_code=status, headers=retry_after(exc))

    def start_over(request: Request, state: PageState, next_: str) -> JSONResponse:
        """The MFA step expired: back to the sign-in page, saying so."""
        query = {"notice": "mfa_expired", "next": safe_landing(pages, next_) or ""}
        target = (
            pages.url(request, "login") + "?" + urlencode({k: v for k, v in query.items() if v})
        )
        response = pages.redirect(target, state)
        clear_mfa_cookie(response, settings)
        return as_json(response)

    @router.post("/login/passkey", name="authdb_page_login_passkey")
    async def login_passkey(request: Request) -> Response:
        state, answer = await read(request)
        client = deps.client_resolver(request)
        try:
            browser = await passkey_login.login_browser(
                core, deps.limits, answer.flow_id, answer.credential, client
            )
        except errors.MFARequired as exc:
            return as_json(to_second_factor(pages, request, state, exc.mfa_token, answer.next))
        except _REFUSALS as exc:
            return refused(exc)
        response = as_json(await signed_in(core, pages, request, browser, answer.next))
        return checked_later(response, deps, browser.session_id)

    @router.post("/login/mfa/passkey", name="authdb_page_login_mfa_passkey")
    async def second_factor(request: Request) -> Response:
        state, answer = await read(request)
        mfa_token = read_mfa_cookie(request, settings)
        if mfa_token is None:
            return start_over(request, state, answer.next)
        try:
            browser = await passkey_login.login_browser(
                core,
                deps.limits,
                answer.flow_id,
                answer.credential,
                deps.client_resolver(request),
                mfa_token=mfa_token,
            )
        except errors.InvalidMFAToken:
            return start_over(request, state, answer.next)
        except _REFUSALS as exc:
            return refused(exc)
        response = as_json(await signed_in(core, pages, request, browser, answer.next))
        return checked_later(response, deps, browser.session_id)
