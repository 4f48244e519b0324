"""``/users/me/events``: the caller's own security timeline."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import PlainValidator

from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.openapi import error_responses
from authdb.http.params import bounded_parser, int_schema
from authdb.http.schemas_events import SecurityEventRead
from authdb.services import timeline
from authdb.services.sessions import Authenticated

Limit = Annotated[
    int,
    PlainValidator(bounded_parser(1, timeline.MAX_LIMIT)),
    int_schema(1, timeline.MAX_LIMIT),
]
Before = Annotated[int, PlainValidator(bounded_parser(1)), int_schema(1)]


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(
        prefix="/users/me",
        tags=["me"],
        route_class=AuthRoute,
        responses=error_responses(401, 503),
    )

    @router.get("/events", response_model=list[SecurityEventRead], responses=error_responses(422))
    async def list_events(
        auth: Annotated[Authenticated, Depends(deps.current_session)],
        limit: Annotated[Limit, Query(description="How many events, newest first")] = (
            timeline.DEFAULT_LIMIT
        ),
        before: Annotated[
            Before | None, Query(description="Only events older than this event id")
        ] = None,
    ) -> list[SecurityEventRead]:
        """The caller's own security events, newest first: sign-ins (with device and address)
        and failed attempts, password and email changes, MFA and passkey changes, sessions
        ended. Page back with ``before=`` the last ``id`` seen."""
        entries = await timeline.list_own(deps.core, auth.user.id, limit=limit, before=before)
        return [SecurityEventRead.model_validate(entry) for entry in entries]

    return router
