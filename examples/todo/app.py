"""Todos owned by users: a small real app with authdb mounted under ``/auth``.

Run it from the repository root (see README.md beside this file):

    export AUTHDB_DATABASE_URL=sqlite+aiosqlite:///./todo.db
    export AUTHDB_SECRET_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(48))")
    authdb migrate                                     # authdb's tables
    alembic -c examples/todo/alembic.ini upgrade head  # the app's tables (and authdb's)
    uvicorn examples.todo.app:app --reload

Settings are authdb's ``AUTHDB_*`` variables; the app and authdb share one database, so that
``todos.owner_id`` can reference ``users.id``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Response, status
from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncSession

from authdb import Auth, Settings
from authdb.db.schema import User
from authdb.services.core import ClientInfo
from authdb.services.hooks import UserSnapshot

from .models import Todo

HERE = Path(__file__).parent
log = logging.getLogger("todo")


class Profile(BaseModel):
    """The app's own fields on every user: ``"profile": {...}`` in POST /auth/register and
    PATCH /auth/users/me, ``user.profile`` in code."""

    company: str | None = Field(None, max_length=100)
    newsletter: bool = False


# The app's templates folder holds its own emails (welcome.*) and could override authdb's.
auth = Auth(Settings(templates_dir=str(HERE / "templates")), profile=Profile)


@auth.on("user_registered")
async def send_welcome(user: UserSnapshot, client: ClientInfo) -> None:
    """Runs after the new account is committed; an exception here is logged by authdb and
    changes nothing for the person registering."""
    if not user.email:
        return
    profile = Profile.model_validate(user.profile or {})  # defaults for a profile-less user
    await auth.mailer.send(
        user.email,
        "welcome",
        username=user.username,
        company=profile.company,
        newsletter=profile.newsletter,
    )


def _alembic_config() -> Config:
    return Config(str(HERE / "alembic.ini"))


def _app_revision(connection: Connection) -> str | None:
    # The app's own version table (alembic_version); authdb keeps authdb_alembic_version.
    return MigrationContext.configure(connection).get_current_revision()


async def check_app_schema() -> None:
    """Refuse to start until ``alembic upgrade head`` has created the app's tables."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    async with auth.engine.connect() as connection:  # authdb's engine: one pool
        current = await connection.run_sync(_app_revision)
    if current != head:
        raise RuntimeError(
            f"the todo tables are at revision {current}, not {head}: "
            "run `alembic -c examples/todo/alembic.ini upgrade head`"
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's own start-up and shut-down, run inside authdb's (``lifespan_with``)."""
    await check_app_schema()
    log.info("todo app started")
    yield


app = FastAPI(title="Todos", lifespan=auth.lifespan_with(lifespan))
# Pages first (their form posts share some paths with the API), both under /auth.
app.include_router(auth.pages_router, prefix="/auth")
app.include_router(auth.router, prefix="/auth")

CurrentUser = Annotated[User, Depends(auth.current_active_user)]
DB = Annotated[AsyncSession, Depends(auth.db_session)]


def _printable(text: str) -> str:
    # PostgreSQL cannot store NUL, and no title needs a control character.
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise ValueError("must not contain control characters")
    return text


Title = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]


class TodoCreate(BaseModel):
    title: Title


class TodoUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    done: bool | None = None


class TodoRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    done: bool
    created_at: datetime


# todos.id is an INTEGER: a larger number names nothing (and must not reach PostgreSQL).
TodoId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]

todos = APIRouter(prefix="/todos", tags=["todos"])


async def _own(db: AsyncSession, user: User, todo_id: int) -> Todo:
    """The caller's todo, or 404: someone else's todo does not exist for them."""
    todo = await db.scalar(select(Todo).where(Todo.id == todo_id, Todo.owner_id == user.id))
    if todo is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Todo not found")
    return todo


@todos.get("", response_model=list[TodoRead])
async def list_todos(user: CurrentUser, db: DB) -> list[Todo]:
    """The caller's todos, oldest first."""
    rows = await db.scalars(select(Todo).where(Todo.owner_id == user.id).order_by(Todo.id))
    return list(rows)


@todos.post("", response_model=TodoRead, status_code=status.HTTP_201_CREATED)
async def create_todo(body: TodoCreate, user: CurrentUser, db: DB) -> Todo:
    todo = Todo(owner_id=user.id, title=body.title)
    db.add(todo)
    await db.commit()
    return todo


@todos.get("/{todo_id}", response_model=TodoRead)
async def get_todo(todo_id: TodoId, user: CurrentUser, db: DB) -> Todo:
    return await _own(db, user, todo_id)


@todos.patch("/{todo_id}", response_model=TodoRead)
async def update_todo(todo_id: TodoId, body: TodoUpdate, user: CurrentUser, db: DB) -> Todo:
    todo = await _own(db, user, todo_id)
    for name, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(todo, name, value)
    await db.commit()
    return todo


@todos.delete("/{todo_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_todo(todo_id: TodoId, user: CurrentUser, db: DB) -> Response:
    await db.delete(await _own(db, user, todo_id))
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


app.include_router(todos)
