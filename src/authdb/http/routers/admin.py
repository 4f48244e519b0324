"""``/users`` and ``/users/{id}``: user administration, for active superusers only."""

from typing import Annotated, cast

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Response, status
from pydantic import BaseModel, PlainValidator

from authdb.db.models import User
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.mailing import send_later
from authdb.http.openapi import error_responses
from authdb.http.params import Offset, UserId, bounded_parser, int_schema
from authdb.http.schemas import AdminUserUpdate, Text, body_as, user_schemas
from authdb.services import admin, mfa
from authdb.services.core import ClientInfo

PageSize = Annotated[
    int, PlainValidator(bounded_parser(1, admin.MAX_PAGE_SIZE)), int_schema(1, admin.MAX_PAGE_SIZE)
]


def build(deps: AuthDeps) -> APIRouter:
    # The superuser check sits on the router, so no admin route can be added without it.
    router = APIRouter(
        prefix="/users",
        tags=["admin"],
        dependencies=[Depends(deps.current_superuser)],
        route_class=AuthRoute,
        responses=error_responses(400, 401, 403, 422, 503),
    )
    Superuser = Annotated[User, Depends(deps.current_superuser)]
    Client = Annotated[ClientInfo, Depends(deps.client)]
    schemas = user_schemas(deps.core.profile_model)
    UserRead, UserPage = schemas.read, schemas.page

    @router.get("", response_model=UserPage)
    async def list_users(
        offset: Annotated[Offset, Query()] = 0,
        limit: Annotated[PageSize, Query()] = 50,
        search: Annotated[Text | None, Query(max_length=320)] = None,
    ) -> BaseModel:
        """Users ordered by id; ``search`` matches username, email or full name, any case."""
        page = await admin.list_users(deps.core, offset=offset, limit=limit, search=search)
        return UserPage(
            items=[UserRead.model_validate(user) for user in page.items], total=page.total
        )

    @router.get("/{user_id}", response_model=UserRead, responses=error_responses(404))
    async def read_user(user_id: UserId) -> User:
        """One user."""
        return await admin.get_user(deps.core, user_id)

    @router.patch("/{user_id}", response_model=UserRead, responses=error_responses(404, 409))
    @body_as(schemas.admin_update)
    async def update_user(
        user_id: UserId, body: AdminUserUpdate, actor: Superuser, client: Client
    ) -> User:
        """Change any of a user's fields; disabling or a new password ends their sessions.

        ``profile`` changes only the keys it gives, as ``PATCH /users/me`` does.
        """
        # The schema's fields are UserChanges' keys; the service rejects nulls where not allowed.
        changes = cast(admin.UserChanges, body.model_dump(exclude_unset=True))
        return await admin.update_user(
            deps.core, user_id, changes, client=client, actor_id=actor.id
        )

    @router.delete(
        "/{user_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(404, 409),
    )
    async def delete_user(user_id: UserId, actor: Superuser, client: Client) -> Response:
        """Delete a user and end their sessions."""
        await admin.delete_user(deps.core, user_id, client=client, actor_id=actor.id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.delete(
        "/{user_id}/mfa",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(404),
    )
    async def reset_mfa(
        user_id: UserId, actor: Superuser, client: Client, background: BackgroundTasks
    ) -> Response:
        """Turn a user's MFA off (a lost authenticator and lost recovery codes); they are told
        by email. Their sessions stay."""
        notice = await mfa.reset(deps.core, user_id, client, actor_id=actor.id)
        send_later(background, deps.mailer, [notice])
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
