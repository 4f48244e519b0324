"""``/account``: profile, email, password, two-factor authentication (see ``account_mfa``),
sessions and account deletion, for a signed-in browser.

Each section is its own form. A success redirects back (303) with a fixed notice; a refusal
renders the page again with the error next to its field, and a status that says what went
wrong (422 invalid, 400 wrong password, 409 taken, 429 locked or over budget).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from starlette.background import BackgroundTasks
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from authdb import errors
from authdb.db.models import AuthSession
from authdb.http.cookies import clear_session_cookie
from authdb.http.dependencies import AuthDeps
from authdb.http.devices import device_name
from authdb.http.mailing import send_later
from authdb.http.pages import account_mfa, account_passkeys
from authdb.http.pages.forms import Refusal, Section, parse, refusal
from authdb.http.pages.oauth import OAuthPages, account_view
from authdb.http.pages.oauth import sections as oauth_sections
from authdb.http.pages.render import Pages, PageState, text
from authdb.http.params import id_parser
from authdb.http.schemas import PasswordChange, PasswordConfirm, UserUpdate
from authdb.services import accounts, passkeys, sessions
from authdb.services.sessions import Authenticated


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# The API's own reading of a session id (canonical digits, 1..2**63-1).
_session_id = id_parser("session")


def _session_view(session: AuthSession, current_id: int) -> dict[str, Any]:
    return {
        "id": session.id,
        "created": _when(session.created_at),
        "last_used": _when(session.last_used_at),
        "device": device_name(session.user_agent),
        "ip": session.ip_address or "unknown",
        "current": session.id == current_id,
    }


def add_routes(
    router: APIRouter,
    deps: AuthDeps,
    pages: Pages,
    *,
    with_mfa: bool = True,
    with_passkeys: bool = True,
    oauth: OAuthPages | None = None,
) -> None:
    """Add ``/account`` and its section forms to ``router``; without ``with_mfa`` or
    ``with_passkeys``, the page has no such section; with ``oauth``, it has a section to link
    and unlink sign-in providers."""
    core = deps.core

    async def show(
        request: Request,
        state: PageState,
        auth: Authenticated,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        live = await sessions.list_live(core, auth.user.id)
        own_passkeys = await passkeys.list_for(core, auth.user.id) if with_passkeys else []
        providers = await account_view(oauth, request, auth.user) if oauth else None
        return pages.render(
            request,
            state,
            "account",
            title="Your account",
            status=status,
            user=auth.user,
            sessions=[_session_view(s, auth.session_id) for s in live],
            passkeys=[account_passkeys.passkey_view(p) for p in own_passkeys],
            removing=account_passkeys.removing(request),
            oauth=providers,
            signed_in=True,
            **context,
        )

    def to_login(request: Request, state: PageState) -> Response:
        account = pages.url(request, "account")
        return pages.redirect(f"{pages.url(request, 'login')}?next={account}", state)

    @router.get("/account", name="authdb_page_account")
    async def account_page(request: Request) -> Response:
        state = pages.state(request)
        auth = await deps.optional_session(request)
        if auth is None:
            return to_login(request, state)
        return await show(request, state, auth, notice=pages.notice(request))

    def section(path: str, name: str, form_name: str, run: Section) -> None:
        async def submit(request: Request) -> Response:
            state, form = await pages.posted(request, back=pages.url(request, "account"))
            auth = await deps.optional_session(request)
            if auth is None:
                return to_login(request, state)
            try:
                response = await run(request, form, auth)
            except Refusal as refused:
                values = {k: text(form, k) for k in ("username", "full_name", "email")}
                return await show(
                    request,
                    state,
                    auth,
                    status=refused.status,
                    form=form_name,
                    errors=refused.errors,
                    error=refused.error,
                    values=values,
                    headers=refused.headers,
                )
            return response or pages.redirect(pages.url(request, "account"), state)

        router.add_api_route(path, submit, methods=["POST"], name=name)

    async def profile(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        body, problems = parse(
            UserUpdate,
            {"username": text(form, "username"), "full_name": text(form, "full_name") or None},
        )
        if body is None:
            raise Refusal(422, problems)
        changes = body.model_dump(exclude_unset=True)
        try:
            await accounts.update_account(
                core, deps.limits, auth.user, changes, deps.client_resolver(request)
            )
        except errors.AuthError as exc:
            raise refusal(exc, "username") from None
        return pages.redirect(pages.url(request, "account") + "?notice=profile_saved")

    async def email(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        body, problems = parse(
            UserUpdate,
            {"email": text(form, "email"), "current_password": text(form, "current_password")},
        )
        if body is None:
            raise Refusal(422, problems)
        try:
            _user, mails = await accounts.update_account(
                core,
                deps.limits,
                auth.user,
                body.model_dump(exclude_unset=True),
                deps.client_resolver(request),
            )
        except errors.AuthError as exc:
            raise refusal(exc, "email") from None
        response = pages.redirect(pages.url(request, "account") + "?notice=email_pending")
        response.background = BackgroundTasks()
        send_later(response.background, deps.mailer, mails)
        return response

    async def password(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        new = text(form, "new_password")
        if new != text(form, "new_password_confirm"):
            raise Refusal(422, {"new_password_confirm": "The passwords do not match."})
        body, problems = parse(
            PasswordChange,
            {"current_password": text(form, "current_password"), "new_password": new},
        )
        if body is None:
            raise Refusal(422, problems)
        try:
            await accounts.change_password(
                core,
                deps.limits,
                auth,
                body.current_password,
                body.new_password,
                deps.client_resolver(request),
            )
        except errors.AuthError as exc:
            raise refusal(exc, "new_password") from None
        return pages.redirect(pages.url(request, "account") + "?notice=password_changed")

    async def delete(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        body, problems = parse(PasswordConfirm, {"password": text(form, "password")})
        if body is None:
            raise Refusal(422, problems)
        try:
            await accounts.delete_account(
                core, deps.limits, auth.user, body.password, deps.client_resolver(request)
            )
        except errors.IncorrectPassword as exc:
            raise Refusal(400, {"password": exc.detail}) from None
        except errors.AuthError as exc:
            if isinstance(exc, errors.Conflict):
                raise Refusal(409, {}, exc.detail) from None
            raise refusal(exc, "password") from None
        target = pages.url(request, "login") + "?notice=account_deleted"
        response = pages.redirect(target, pages.signed_out_state())
        clear_session_cookie(response, core.settings)
        return response

    section("/account/profile", "authdb_page_account_profile", "profile", profile)
    section("/account/email", "authdb_page_account_email", "email", email)
    section("/account/password", "authdb_page_account_password", "password", password)
    section("/account/delete", "authdb_page_account_delete", "delete", delete)
    if with_mfa:
        for path, name, form_name, run in account_mfa.sections(deps, pages):
            section(path, name, form_name, run)
    if with_passkeys:
        for path, name, form_name, run in account_passkeys.sections(deps, pages):
            section(path, name, form_name, run)
    if oauth is not None:
        for path, name, form_name, run in oauth_sections(deps, oauth):
            section(path, name, form_name, run)

        # Only for ``paths.account_oauth`` in templates: the prefix the provider forms extend.
        @router.get("/account/oauth", name="authdb_page_account_oauth", include_in_schema=False)
        async def oauth_prefix(request: Request) -> Response:
            return pages.redirect(pages.url(request, "account"))

    async def revoke(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        try:
            session_id: int | None = _session_id(request.path_params.get("session_id", ""))
        except (ValueError, errors.NotFound):
            session_id = None  # no session can have it: nothing to end
        if session_id is not None:
            # Already ended, or not the caller's: the list shows what is live.
            with contextlib.suppress(errors.NotFound):
                await sessions.end_own(core, auth, session_id, deps.client_resolver(request))
        if session_id == auth.session_id:
            response = pages.redirect(
                pages.url(request, "login") + "?notice=signed_out", pages.signed_out_state()
            )
            clear_session_cookie(response, core.settings)
            return response
        return pages.redirect(pages.url(request, "account") + "?notice=session_revoked")

    section(
        "/account/sessions/{session_id}/revoke",
        "authdb_page_account_session_revoke",
        "sessions",
        revoke,
    )

    # Only for ``paths.account_passkeys`` in templates: the prefix the remove forms extend.
    async def passkeys_prefix(request: Request) -> Response:
        return pages.redirect(pages.url(request, "account"))

    if with_passkeys:
        router.add_api_route(
            "/account/passkeys",
            passkeys_prefix,
            methods=["GET"],
            name="authdb_page_account_passkeys",
            include_in_schema=False,
        )

    # Only for ``paths.account_sessions`` in templates: the prefix the revoke forms extend.
    @router.get("/account/sessions", name="authdb_page_account_sessions", include_in_schema=False)
    async def sessions_prefix(request: Request) -> Response:
        return pages.redirect(pages.url(request, "account"))
