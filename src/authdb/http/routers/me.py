"""``/users/me``: the caller's own account and sessions."""

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from authdb.db.models import User
from authdb.http.dependencies import AuthDeps, active
from authdb.http.errors import AuthRoute
from authdb.http.openapi import error_responses
from authdb.http.params import SessionId
from authdb.http.schemas import SessionRead, user_schemas
from authdb.services import sessions
from authdb.services.core import ClientInfo
from authdb.services.sessions import Authenticated


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(
        prefix="/users/me",
        tags=["me"],
        route_class=AuthRoute,
        responses=error_responses(401, 503),
    )
    Session = Annotated[Authenticated, Depends(deps.current_session)]
    UserRead = user_schemas(deps.core.profile_model).read

    @router.get("", response_model=UserRead, responses=error_responses(400))
    @router.get("/", response_model=UserRead, include_in_schema=False)
    async def read_me(auth: Session) -> User:
        """The signed-in user (also at ``/users/me/``, as in the FastAPI tutorial)."""
        # current_active_user's check, one dependency level less on the busiest route.
        return active(auth.user)

    @router.get("/sessions", response_model=list[SessionRead])
    async def list_sessions(auth: Session) -> list[SessionRead]:
        """The caller's live sessions, the current one marked."""
        live = await sessions.list_live(deps.core, auth.user.id)
        return [
            SessionRead.model_validate(s).model_copy(update={"current": s.id == auth.session_id})
            for s in live
        ]

    @router.delete(
        "/sessions/{session_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(404, 422),
    )
    async def delete_session(
        session_id: SessionId,
        auth: Session,
        client: Annotated[ClientInfo, Depends(deps.client)],
    ) -> Response:
        """End one of the caller's sessions; its tokens stop working at once."""
        await sessions.end_own(deps.core, auth, session_id, client)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
