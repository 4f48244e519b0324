"""``POST /token`` (password and refresh grants) and ``POST /logout``."""

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Form, Response, status
from fastapi.exceptions import RequestValidationError

from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.oauth_errors import OAuthError, TokenRoute
from authdb.http.openapi import error_responses, token_errors
from authdb.http.schemas import LogoutRequest, Token
from authdb.services import sessions
from authdb.services.core import ClientInfo
from authdb.services.login import login
from authdb.services.sessions import Authenticated, TokenPair

_FIELD = 1024


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


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(tags=["auth"], route_class=AuthRoute, responses=error_responses(503))
    # /token's errors carry RFC 6749 `error` fields too (see authdb.http.oauth_errors).
    token_router = APIRouter(tags=["auth"], route_class=TokenRoute)
    Client = Annotated[ClientInfo, Depends(deps.client)]

    @token_router.post(
        "/token", response_model=Token, responses=token_errors(400, 401, 422, 429, 503)
    )
    async def token(
        client: Client,
        grant_type: Annotated[str, Form(max_length=32)] = "password",
        username: Annotated[str | None, Form(max_length=_FIELD)] = None,
        password: Annotated[str | None, Form(max_length=4096)] = None,
        refresh_token: Annotated[str | None, Form(max_length=_FIELD)] = None,
        scope: Annotated[str, Form(max_length=_FIELD)] = "",
    ) -> Token:
        """OAuth2 token endpoint: ``password`` grant (username or email) or ``refresh_token``."""
        if grant_type == "password":
            name = _required(username, "username")
            secret = _required(password, "password")
            return _token(await login(deps.core, deps.limits, name, secret, client))
        if grant_type == "refresh_token":
            presented = _required(refresh_token, "refresh_token")
            return _token(await sessions.refresh(deps.core, presented, client))
        raise OAuthError(
            400, "unsupported_grant_type", "Unsupported grant_type: use password or refresh_token"
        )

    router.include_router(token_router)

    @router.post(
        "/logout", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 422)
    )
    async def logout(
        auth: Annotated[Authenticated, Depends(deps.current_session)],
        client: Client,
        body: Annotated[LogoutRequest | None, Body()] = None,
    ) -> Response:
        """End the caller's session: its refresh token and access tokens stop working."""
        await sessions.logout(deps.core, auth, client)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
