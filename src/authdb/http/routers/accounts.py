"""Self-service accounts: register, verify, recover and change passwords, edit or delete oneself.

Mail goes out after the response (see ``authdb.http.mailing``).
"""

from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Response, status
from pydantic import BaseModel

from authdb.db.models import User
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.mailing import Prepare, prepare_and_send, send_later
from authdb.http.openapi import error_responses
from authdb.http.schemas import (
    EmailRequest,
    PasswordChange,
    PasswordConfirm,
    PasswordReset,
    TokenRequest,
    UserCreate,
    UserUpdate,
    body_as,
    user_schemas,
)
from authdb.http.shared_paths import SharedWithPageForm
from authdb.services import accounts
from authdb.services.core import ClientInfo
from authdb.services.email_tokens import Mail
from authdb.services.sessions import Authenticated

VERIFY_ACCEPTED = (
    "If this address belongs to an unverified account, a verification email is on its way."
)
RESET_ACCEPTED = "If this address belongs to an account, a password reset email is on its way."


class Accepted(BaseModel):
    """The one answer to a mail request, whether or not the address has an account."""

    message: str


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(
        tags=["accounts"], route_class=AuthRoute, responses=error_responses(422, 503)
    )
    Client = Annotated[ClientInfo, Depends(deps.client)]
    ActiveUser = Annotated[User, Depends(deps.current_active_user)]
    # Shares the request's cached current_session with ActiveUser: one lookup, not two.
    Session = Annotated[Authenticated, Depends(deps.current_session)]
    # With the application's profile model in them (``Auth(profile=...)``), if it has one.
    schemas = user_schemas(deps.core.profile_model)
    UserRead = schemas.read

    def post(background: BackgroundTasks, mails: Iterable[Mail | None]) -> None:
        send_later(background, deps.mailer, mails)

    def look_up_later(
        background: BackgroundTasks, prepare: Prepare, email: str, c: ClientInfo
    ) -> None:
        background.add_task(prepare_and_send, deps.core, deps.mailer, prepare, email, c)

    @body_as(schemas.create)
    async def register(body: UserCreate, client: Client, background: BackgroundTasks) -> User:
        """Create an account; a verification email goes to its address.

        ``profile`` holds the application's own fields, when it has any.
        """
        profile = body.profile
        if profile is None and deps.core.profile_model is not None:
            profile = {}  # the model's defaults, or 422 naming each required field
        user, mail = await accounts.register(
            deps.core,
            deps.limits,
            username=body.username,
            email=str(body.email),
            password=body.password,
            full_name=body.full_name,
            profile=profile,
            client=client,
        )
        post(background, [mail])
        return user

    router.add_api_route(
        "/register",
        register,
        methods=["POST"],
        status_code=status.HTTP_201_CREATED,
        response_model=UserRead,
        responses=error_responses(403, 409, 429),
        route_class_override=SharedWithPageForm,  # the register page's form posts here too
    )

    @router.post(
        "/verify/request", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429)
    )
    async def request_verification(
        body: EmailRequest, client: Client, background: BackgroundTasks
    ) -> Accepted:
        """Mail a new verification link to an unverified account (same answer for any address)."""
        await accounts.spend_email_budgets(deps.core, deps.limits, client, body.email)
        look_up_later(background, accounts.request_verification, body.email, client)
        return Accepted(message=VERIFY_ACCEPTED)

    async def verify(body: TokenRequest, client: Client) -> User:
        """Confirm an email address with the token from the verification link."""
        return await accounts.verify_email(deps.core, body.token, client)

    router.add_api_route(
        "/verify",
        verify,
        methods=["POST"],
        response_model=UserRead,
        responses=error_responses(400, 409),
        route_class_override=SharedWithPageForm,  # the verify page's form posts here too
    )

    @router.post(
        "/password/forgot", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429)
    )
    async def forgot_password(
        body: EmailRequest, client: Client, background: BackgroundTasks
    ) -> Accepted:
        """Mail a password reset link (same answer whether or not the address has an account)."""
        await accounts.spend_email_budgets(deps.core, deps.limits, client, body.email)
        look_up_later(background, accounts.request_password_reset, body.email, client)
        return Accepted(message=RESET_ACCEPTED)

    @router.post(
        "/password/reset", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(400)
    )
    async def reset_password(body: PasswordReset, client: Client) -> Response:
        """Choose a new password with the token from the reset link; every session ends."""
        await accounts.reset_password(deps.core, body.token, body.password, client)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.patch(
        "/users/me", response_model=UserRead, responses=error_responses(400, 401, 409, 429)
    )
    @body_as(schemas.update)
    async def update_me(
        body: UserUpdate, user: ActiveUser, client: Client, background: BackgroundTasks
    ) -> User:
        """Change username, email, full name or profile fields.

        A new email needs ``current_password`` and becomes ``pending_email`` until the link
        mailed to it is followed; the old address is told. ``profile`` changes only the keys
        it gives; the result must satisfy the application's profile model.
        """
        changes = body.model_dump(exclude_unset=True)
        updated, mails = await accounts.update_account(
            deps.core, deps.limits, user, changes, client
        )
        post(background, mails)
        return updated

    @router.post(
        "/users/me/password",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(400, 401, 429),
        dependencies=[Depends(deps.current_active_user)],  # a disabled user gets 400
    )
    async def change_password(body: PasswordChange, auth: Session, client: Client) -> Response:
        """Change the password; every other session ends, this one stays."""
        await accounts.change_password(
            deps.core, deps.limits, auth, body.current_password, body.new_password, client
        )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.delete(
        "/users/me",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(400, 401, 409, 429),
    )
    async def delete_me(body: PasswordConfirm, user: ActiveUser, client: Client) -> Response:
        """Delete the account (the password confirms it); its sessions end with it."""
        await accounts.delete_account(deps.core, deps.limits, user, body.password, client)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
