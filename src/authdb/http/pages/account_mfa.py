"""The "Two-factor authentication" section of ``/account``: set up TOTP, new recovery codes,
turn it off.

Set-up takes two forms: the password starts it and answers with a page showing the QR code
(``mfa_setup.html``); the first code from the app turns MFA on and answers with the recovery
codes, shown this once (``mfa_recovery_codes.html``). A mistyped first code shows the code
field again but never the key (a stolen session cookie must not read it). Refusals that belong
on ``/account`` (wrong password, 409, 429) are ``Refusal``s, shown in the section.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup
from starlette.background import BackgroundTasks
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from authdb import errors
from authdb.http.dependencies import AuthDeps
from authdb.http.mailing import send_later
from authdb.http.pages.forms import REQUIRED, Refusal, Section, parse, refusal
from authdb.http.pages.render import Pages, text
from authdb.http.schemas import MFACode, MFADisable, PasswordConfirm
from authdb.services import mfa
from authdb.services.sessions import Authenticated


def key_groups(secret: str) -> str:
    """The base32 secret in groups of four, as people copy it by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _password(form: FormData) -> str:
    """The form's password, refused at once when empty (it would count as a wrong one)."""
    body, problems = parse(PasswordConfirm, {"password": text(form, "password")})
    if body is None or not body.password:
        raise Refusal(422, problems or {"password": REQUIRED})
    return body.password


def _refusal(exc: errors.AuthError) -> Refusal:
    if isinstance(exc, errors.Conflict):  # "MFA already enabled", "No MFA setup in progress"
        return Refusal(409, {}, exc.detail)
    return refusal(exc, "password", password_field="password")


def sections(deps: AuthDeps, pages: Pages) -> list[tuple[str, str, str, Section]]:
    """The section's forms as (path, route name, form name, handler) for ``/account``."""
    core = deps.core

    def setup_page(
        request: Request,
        setup: mfa.TOTPSetup | None,
        *,
        status: int = 200,
        problems: dict[str, str] | None = None,
    ) -> Response:
        """The set-up page: with ``setup``, its QR code and key (right after the password);
        without, only the code field: the secret is shown once, never to a mere session."""
        shown: dict[str, Any] = {"qr_svg": "", "secret": "", "otpauth_uri": ""}
        if setup is not None:
            shown = {
                # segno's drawing of the otpauth URI, never user input: safe to insert as is.
                "qr_svg": Markup(setup.qr_svg),  # noqa: S704
                "secret": key_groups(setup.secret),
                "otpauth_uri": setup.otpauth_uri,
            }
        return pages.render(
            request,
            pages.state(request),
            "mfa_setup",
            title="Set up two-factor authentication",
            status=status,
            signed_in=True,
            errors=problems or {},
            **shown,
        )

    def codes_page(request: Request, codes: list[str], notice: str) -> Response:
        return pages.render(
            request,
            pages.state(request),
            "mfa_recovery_codes",
            title="Your recovery codes",
            signed_in=True,
            notice=notice,
            codes=codes,
        )

    async def setup(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        password = _password(form)
        try:
            pending = await mfa.begin_setup(
                core, deps.limits, auth.user, password, deps.client_resolver(request)
            )
        except errors.AuthError as exc:
            raise _refusal(exc) from None
        return setup_page(request, pending)

    async def setup_again(
        request: Request, auth: Authenticated, status: int, problems: dict[str, str]
    ) -> Response:
        if not await mfa.has_pending_setup(core, auth.user):
            raise Refusal(409, {}, mfa.NO_SETUP)
        return setup_page(request, None, status=status, problems=problems)

    async def confirm(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        body, problems = parse(MFACode, {"code": text(form, "code")})
        if body is None:
            return await setup_again(request, auth, 422, problems)
        try:
            codes, notice = await mfa.confirm_setup(
                core, deps.limits, auth.user, body.code, deps.client_resolver(request)
            )
        except errors.InvalidMFACode as exc:
            return await setup_again(request, auth, 400, {"code": exc.detail})
        except errors.AuthError as exc:
            raise _refusal(exc) from None
        response = codes_page(request, codes, "Two-factor authentication is on.")
        response.background = BackgroundTasks()
        send_later(response.background, deps.mailer, [notice])
        return response

    async def new_codes(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        password = _password(form)
        try:
            codes, notice = await mfa.regenerate_recovery_codes(
                core, deps.limits, auth.user, password, deps.client_resolver(request)
            )
        except errors.AuthError as exc:
            raise _refusal(exc) from None
        response = codes_page(
            request, codes, "You have new recovery codes. Your earlier codes no longer work."
        )
        response.background = BackgroundTasks()
        send_later(response.background, deps.mailer, [notice])
        return response

    async def disable(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        password = text(form, "password")
        body, problems = parse(MFADisable, {"password": password, "code": text(form, "code")})
        if not password:
            problems["password"] = REQUIRED
        if body is None or problems:
            raise Refusal(422, problems)
        try:
            notice = await mfa.disable(
                core,
                deps.limits,
                auth.user,
                body.password,
                body.code,
                deps.client_resolver(request),
            )
        except errors.AuthError as exc:
            raise _refusal(exc) from None
        response = pages.redirect(pages.url(request, "account") + "?notice=mfa_disabled")
        response.background = BackgroundTasks()
        send_later(response.background, deps.mailer, [notice])
        return response

    return [
        ("/account/mfa/setup", "authdb_page_account_mfa_setup", "mfa_setup", setup),
        # A refusal here (no set-up in progress) shows where set-up starts.
        ("/account/mfa/confirm", "authdb_page_account_mfa_confirm", "mfa_setup", confirm),
        (
            "/account/mfa/recovery-codes",
            "authdb_page_account_mfa_recovery_codes",
            "mfa_codes",
            new_codes,
        ),
        ("/account/mfa/disable", "authdb_page_account_mfa_disable", "mfa_disable", disable),
    ]
