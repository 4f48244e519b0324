"""Passkeys (WebAuthn): ``/users/me/passkeys`` to manage them, ``/passkeys/login`` to sign in.

The ceremonies are in ``authdb.services.passkeys`` and ``authdb.services.passkey_login``; the
pages' script (``/assets/authdb-passkeys.js``) calls these same routes.
"""

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Response, status
from fastapi.responses import JSONResponse

from authdb.db.models import User
from authdb.errors import MFARequired
from authdb.http.dependencies import AuthDeps
from authdb.http.devices import recognised_device
from authdb.http.errors import AuthRoute
from authdb.http.mailing import send_later
from authdb.http.openapi import MFARequiredResponse, error_responses
from authdb.http.params import PASSKEY_ID, PasskeyId
from authdb.http.schemas import (
    PasskeyCreate,
    PasskeyDelete,
    PasskeyLogin,
    PasskeyLoginOptions,
    PasskeyLoginStart,
    PasskeyOptionsRequest,
    PasskeyRead,
    Token,
)
from authdb.http.signin_alerts import check_later
from authdb.services import passkey_login, passkeys
from authdb.services.core import ClientInfo
from authdb.services.sessions import Authenticated

# The ceremonies' own refusals: no domain name in PUBLIC_URL (409), extra missing (501).
_UNAVAILABLE = (409, 501)


def mfa_required_response(exc: MFARequired) -> JSONResponse:
    """403 with what completes the sign-in, as ``POST /token`` answers it."""
    body = {"detail": exc.detail, "mfa_token": exc.mfa_token, "mfa_methods": exc.methods}
    return JSONResponse(body, status_code=403, headers={"Cache-Control": "no-store"})


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(tags=["passkeys"], route_class=AuthRoute, responses=error_responses(503))
    ActiveUser = Annotated[User, Depends(deps.current_active_user)]
    Client = Annotated[ClientInfo, Depends(deps.client)]
    signed_in = error_responses(400, 401)

    @router.post(
        "/users/me/passkeys/options",
        name="authdb_passkey_options",
        responses={**signed_in, **error_responses(403, 422, 429, *_UNAVAILABLE)},
    )
    async def registration_options(
        auth: Annotated[Authenticated, Depends(deps.current_session)],
        _active: ActiveUser,
        client: Client,
        body: Annotated[PasskeyOptionsRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        """Options for ``navigator.credentials.create()`` (PublicKeyCredentialCreationOptionsJSON)
        to add a passkey: a discoverable credential, user verification preferred, a
        single-use challenge valid 5 minutes. 409 at 20 passkeys.

        A passkey signs in on its own, so adding one takes a sign-in of the last 10 minutes or
        the ``password`` (403 ``Confirm your password ...`` otherwise; a wrong one is 400 and
        counts as a failed login).
        """
        password = body.password if body is not None else None
        return await passkeys.registration_options(deps.core, deps.limits, auth, password, client)

    @router.post(
        "/users/me/passkeys",
        name="authdb_passkey_register",
        status_code=status.HTTP_201_CREATED,
        response_model=PasskeyRead,
        responses={**signed_in, **error_responses(422, *_UNAVAILABLE)},
    )
    async def register(
        body: PasskeyCreate, user: ActiveUser, client: Client, background: BackgroundTasks
    ) -> PasskeyRead:
        """Add the passkey that ``navigator.credentials.create()`` made with the options above.

        400 ``Invalid passkey`` for a response that does not verify or a used, expired or
        foreign challenge; 409 ``Passkey already registered``. The account is told by email.
        """
        passkey, notice = await passkeys.register(
            deps.core,
            user,
            body.credential,
            body.name,
            client,
            default_name=recognised_device(client.user_agent) or passkeys.DEFAULT_NAME,
        )
        send_later(background, deps.mailer, [notice])
        return PasskeyRead.model_validate(passkey)

    @router.get(
        "/users/me/passkeys",
        name="authdb_passkey_list",
        response_model=list[PasskeyRead],
        responses=signed_in,
    )
    async def list_passkeys(user: ActiveUser) -> list[PasskeyRead]:
        """The caller's passkeys, oldest first."""
        found = await passkeys.list_for(deps.core, user.id)
        return [PasskeyRead.model_validate(passkey) for passkey in found]

    @router.delete(
        # "/users/me/passkeys/options" is not a passkey (see authdb.http.params).
        f"/users/me/passkeys/{{passkey_id:{PASSKEY_ID}}}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses={**signed_in, **error_responses(404, 422, 429)},
    )
    async def delete_passkey(
        passkey_id: PasskeyId,
        body: Annotated[PasskeyDelete, Body()],
        user: ActiveUser,
        client: Client,
        background: BackgroundTasks,
    ) -> Response:
        """Remove a passkey (the password confirms it; a wrong one counts as a failed login).
        The account is told by email."""
        notice = await passkeys.remove(
            deps.core, deps.limits, user, passkey_id, body.password, client
        )
        send_later(background, deps.mailer, [notice])
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post(
        "/passkeys/login/options",
        name="authdb_passkey_login_options",
        response_model=PasskeyLoginOptions,
        responses=error_responses(422, *_UNAVAILABLE),
    )
    async def login_options(
        body: Annotated[PasskeyLoginStart | None, Body()] = None,
    ) -> PasskeyLoginOptions:
        """Options for ``navigator.credentials.get()`` and the ``flow_id`` of this sign-in.

        ``allowCredentials`` is always empty (the device offers its passkeys for this site),
        so the answer is the same for every account. With ``username``, only that account's
        passkey completes the flow.
        """
        flow_id, options = passkey_login.login_options(deps.core, body.username if body else None)
        return PasskeyLoginOptions(flow_id=flow_id, options=options)

    @router.post(
        "/passkeys/login",
        name="authdb_passkey_login",
        response_model=Token,
        responses={
            **error_responses(400, 401, 422, 429, *_UNAVAILABLE),
            403: {
                "model": MFARequiredResponse,
                "description": "`MFA required`: a passkey without user verification on an "
                "account with MFA on; finish with `POST /token`'s MFA grant",
            },
        },
    )
    async def login(
        body: PasskeyLogin, client: Client, background: BackgroundTasks
    ) -> Response | Token:
        """Sign in with a passkey: the answer of ``navigator.credentials.get()`` to the options
        of ``flow_id`` gives the usual token pair.

        A passkey that verified the user (PIN, biometrics) satisfies MFA; one that did not is
        one factor (403 ``MFA required`` when the account has MFA on). With ``mfa_token`` (from
        a password sign-in's 403) the passkey is the second factor. Failures: 401
        ``Invalid passkey``, counted as failed logins.
        """
        try:
            pair = await passkey_login.login(
                deps.core,
                deps.limits,
                body.flow_id,
                body.credential,
                client,
                mfa_token=body.mfa_token,
            )
        except MFARequired as exc:
            return mfa_required_response(exc)
        check_later(background, deps, pair.session_id)
        return Token(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
        )

    return router
