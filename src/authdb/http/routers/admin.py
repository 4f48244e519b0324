"""``/users`` and ``/users/{id}``: user administration, for active superusers only."""

from typing import Annotated, cast

from fastapi import APIRouter, Depends, Query, Response, status

from authdb.db.models import User
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.schemas import AdminUserUpdate, UserPage, UserRead
from authdb.services import admin
from authdb.services.core import ClientInfo


def build(deps: AuthDeps) -> APIRouter:
    # The superuser check sits on the router, so no admin route can be added without it.
    router = APIRouter(
        prefix="/users",
        tags=["admin"],
        dependencies=[Depends(deps.current_superuser)],
        route_class=AuthRoute,
    )
    Superuser = Annotated[User, Depends(deps.current_superuser)]
    Client = Annotated[ClientInfo, Depends(deps.client)]

    @router.get("", response_model=UserPage)
    async def list_users(
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=admin.MAX_PAGE_SIZE)] = 50,
        search: Annotated[str | None, Query(max_length=320)] = None,
    ) -> UserPage:
        """Users ordered by id; ``search`` matches username, email or full name, any case."""
        page = await admin.list_users(deps.core, offset=offset, limit=limit, search=search)
        return UserPage(
            items=[UserRead.model_validate(user) for user in page.items], total=page.total
        )

    @router.get("/{user_id}", response_model=UserRead)
    async def read_user(user_id: int) -> User:
        """One user."""
        return await admin.get_user(deps.core, user_id)

    @router.patch("/{user_id}", response_model=UserRead)
    async def update_user(
        user_id: int, body: AdminUserUpdate, actor: Superuser, client: Client
    ) -> User:
        """Change any of a user's fields; disabling or a new password ends their sessions."""
        # The schema's fields are UserChanges' keys; the service rejects nulls where not allowed.
        changes = cast(admin.UserChanges, body.model_dump(exclude_unset=True))
        return await admin.update_user(
            deps.core, user_id, changes, client=client, actor_id=actor.id
        )

    @router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete_user(user_id: int, actor: Superuser, client: Client) -> Response:
        """Delete a user and end their sessions."""
        await admin.delete_user(deps.core, user_id, client=client, actor_id=actor.id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
