"""``POST /token`` (password and refresh grants) and ``POST /logout``."""

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Form, Response, status
from fastapi.exceptions import RequestValidationError

from authdb.errors import MFARequired
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.oauth_errors import OAuthError, TokenRoute
from authdb.http.openapi import error_responses, token_errors
from authdb.http.schemas import LogoutRequest, Token
from authdb.http.shared_paths import SharedWithPageForm
from authdb.http.signin_alerts import check_later
from authdb.http.token_form import MFA_GRANT, TokenForm, read_token_form
from authdb.http.token_form import OPENAPI as TOKEN_FORM_OPENAPI
from authdb.services import sessions
from authdb.services.core import ClientInfo
from authdb.services.login import login, login_mfa
from authdb.services.sessions import Authenticated, TokenPair

GRANT_TYPES = ("password", "refresh_token", MFA_GRANT)
_GRANTS = "password, refresh_token or " + MFA_GRANT
# RFC 7009 2.1: the hint names one of these; any other value is ignored, not refused.
_TOKEN_TYPE_HINTS = ("access_token", "refresh_token")


def _token(pair: TokenPair) -> Token:
    return Token(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


def _required(value: str | None, name: str) -> str:
    if not value:
        # FastAPI's own shape and words for a missing field, as every other 422.
        missing = {"type": "missing", "loc": ("body", name), "msg": "Field required"}
        raise RequestValidationError([{**missing, "input": None}])
    return value


def _mfa_required(exc: MFARequired) -> OAuthError:
    """403 with the ``mfa_token`` that the MFA grant completes (SPEC, "Multi-factor")."""
    extra = {"mfa_token": exc.mfa_token, "mfa_methods": exc.methods}
    return OAuthError(403, "mfa_required", exc.detail, extra=extra)


def _one_factor(otp: str | None, recovery_code: str | None) -> None:
    if (otp is None) == (recovery_code is None):
        issue = {"type": "value_error", "loc": ("body", "otp"), "input": None}
        msg = "Give exactly one of otp and recovery_code"
        raise RequestValidationError([{**issue, "msg": msg}])


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(tags=["auth"], route_class=AuthRoute, responses=error_responses(503))
    Client = Annotated[ClientInfo, Depends(deps.client)]

    async def token(
        client: Client,
        background: BackgroundTasks,
        form: Annotated[TokenForm, Depends(read_token_form)],
    ) -> Token:
        """OAuth2 token endpoint: the ``password`` grant (username or email), ``refresh_token``,
        and the MFA grant.

        For an account with MFA on, a right password answers **403** ``MFA required`` with an
        ``mfa_token`` (valid 5 minutes) and ``mfa_methods``; then ``grant_type=`` the MFA grant
        URN with ``mfa_token`` and ``otp`` (a TOTP code) or ``recovery_code`` gives the tokens.
        """
        grant_type, otp, recovery_code = form.grant_type, form.otp, form.recovery_code
        if grant_type == "password":
            name = _required(form.username, "username")
            secret = _required(form.password, "password")
            try:
                pair = await login(deps.core, deps.limits, name, secret, client)
            except MFARequired as exc:
                raise _mfa_required(exc) from None
            check_later(background, deps, pair.session_id)
            return _token(pair)
        if grant_type == "refresh_token":
            presented = _required(form.refresh_token, "refresh_token")
            return _token(await sessions.refresh(deps.core, presented, client))
        if grant_type == MFA_GRANT:
            challenge = _required(form.mfa_token, "mfa_token")
            _one_factor(otp, recovery_code)
            pair = await login_mfa(
                deps.core, deps.limits, challenge, client, otp=otp, recovery_code=recovery_code
            )
            check_later(background, deps, pair.session_id)
            return _token(pair)
        raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type: use {_GRANTS}")

    async def revoke(
        client: Client,
        token: Annotated[str, Form(description="A refresh token or an access token")],
        token_type_hint: Annotated[
            str | None,
            Form(max_length=64, description="`refresh_token` or `access_token`: looked at first"),
        ] = None,
    ) -> Response:
        """Token revocation (RFC 7009): ends the session that owns ``token``, so its refresh
        token and its access tokens stop working here at once.

        Answers 200 whatever the token: unknown, expired and already revoked tokens change
        nothing (section 2.2). Public clients: no client authentication.
        """
        hint = token_type_hint if token_type_hint in _TOKEN_TYPE_HINTS else None
        await sessions.revoke_token(deps.core, token, hint, client)
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    # /token's errors carry RFC 6749 `error` fields too (see authdb.http.oauth_errors). Added
    # to ``router`` itself, not through a router of their own: each level of routers costs
    # every request that passes it a walk through FastAPI's route matching.
    router.add_api_route(
        "/token",
        token,
        methods=["POST"],
        name="authdb_token",
        response_model=Token,
        responses=token_errors(400, 401, 403, 422, 429, 503),
        openapi_extra=TOKEN_FORM_OPENAPI,
        route_class_override=TokenRoute,
    )
    router.add_api_route(
        "/revoke",
        revoke,
        methods=["POST"],
        name="authdb_revoke",
        response_class=Response,
        responses={200: {"description": "Revoked, or nothing to revoke"}, **token_errors(422, 503)},
        route_class_override=TokenRoute,
    )

    async def logout(
        auth: Annotated[Authenticated, Depends(deps.current_session)],
        client: Client,
        body: Annotated[LogoutRequest | None, Body()] = None,
    ) -> Response:
        """End the caller's session: its refresh token and access tokens stop working."""
        await sessions.logout(deps.core, auth, client)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    router.add_api_route(
        "/logout",
        logout,
        methods=["POST"],
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(401, 422),
        route_class_override=SharedWithPageForm,  # the sign-out page's form posts here too
    )

    return router
