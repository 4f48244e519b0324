"""``/users/me/mfa``: the caller's second factor (RFC 6238 TOTP and recovery codes).

Signing in with it is ``POST /token`` (see ``authdb.http.routers.tokens``); an
administrator's reset is ``DELETE /users/{id}/mfa`` (``authdb.http.routers.admin``).
"""

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Response, status

from authdb.db.models import User
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.mailing import send_later
from authdb.http.openapi import error_responses
from authdb.http.schemas import MFACode, MFADisable, PasswordConfirm, RecoveryCodes, TOTPSetupRead
from authdb.services import mfa
from authdb.services.core import ClientInfo


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(
        prefix="/users/me/mfa",
        tags=["mfa"],
        route_class=AuthRoute,
        responses=error_responses(400, 401, 409, 422, 503),
    )
    ActiveUser = Annotated[User, Depends(deps.current_active_user)]
    Client = Annotated[ClientInfo, Depends(deps.client)]

    @router.post("/totp/setup", response_model=TOTPSetupRead, responses=error_responses(429))
    async def setup_totp(body: PasswordConfirm, user: ActiveUser, client: Client) -> TOTPSetupRead:
        """Start setting up an authenticator app (the password confirms it).

        The secret is pending until ``/totp/confirm``; calling again replaces it. It is shown
        this once and never returned again.
        """
        setup = await mfa.begin_setup(deps.core, deps.limits, user, body.password, client)
        return TOTPSetupRead(
            secret=setup.secret, otpauth_uri=setup.otpauth_uri, qr_svg=setup.qr_svg
        )

    @router.post("/totp/confirm", response_model=RecoveryCodes, responses=error_responses(429))
    async def confirm_totp(
        body: MFACode, user: ActiveUser, client: Client, background: BackgroundTasks
    ) -> RecoveryCodes:
        """Turn MFA on with a first code from the app: returns 10 single-use recovery codes.

        A wrong code counts as a failed login for the account's lockout; a set-up not
        confirmed within 15 minutes must be started again.
        """
        codes, notice = await mfa.confirm_setup(deps.core, deps.limits, user, body.code, client)
        send_later(background, deps.mailer, [notice])
        return RecoveryCodes(recovery_codes=codes)

    @router.post("/recovery-codes", response_model=RecoveryCodes, responses=error_responses(429))
    async def new_recovery_codes(
        body: PasswordConfirm, user: ActiveUser, client: Client, background: BackgroundTasks
    ) -> RecoveryCodes:
        """Ten new recovery codes (the password confirms it); the earlier ones stop working and
        the account is told by email."""
        codes, notice = await mfa.regenerate_recovery_codes(
            deps.core, deps.limits, user, body.password, client
        )
        send_later(background, deps.mailer, [notice])
        return RecoveryCodes(recovery_codes=codes)

    @router.delete("", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(429))
    async def disable_mfa(
        body: Annotated[MFADisable, Body()],
        user: ActiveUser,
        client: Client,
        background: BackgroundTasks,
    ) -> Response:
        """Turn MFA off: the password and a current code or an unused recovery code.

        A wrong code counts as a failed login for the account's lockout.
        """
        notice = await mfa.disable(deps.core, deps.limits, user, body.password, body.code, client)
        send_later(background, deps.mailer, [notice])
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
