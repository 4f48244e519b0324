"""Two requests that get in each other's way: 409 and a retry, never a 500.

An account deleted while its owner edits it (SQLAlchemy's StaleDataError), PostgreSQL's
deadlocks and serialization failures: each is a real error raised by a real database here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import delete
from sqlalchemy.orm.exc import StaleDataError

from authdb.db.models import User
from authdb.db.outage import is_concurrent_change, is_outage
from authdb.http.errors import AuthRoute
from tests.conftest import Harness


async def _stale_update(harness: Harness, user_id: int) -> None:
    """Change a user row that another transaction deleted after it was read."""
    sessionmaker = harness.auth.core.sessionmaker
    async with sessionmaker() as first:
        row = await first.get(User, user_id)
        assert row is not None
        await first.commit()  # ends the read; the row object keeps its state
        async with sessionmaker.begin() as second:
            await second.execute(delete(User).where(User.id == user_id))
        row.full_name = "changed meanwhile"
        await first.flush()


async def test_a_row_deleted_under_an_update_is_a_concurrent_change(harness: Harness) -> None:
    user = await harness.create_user()
    with pytest.raises(StaleDataError) as raised:
        await _stale_update(harness, user.id)
    assert is_concurrent_change(raised.value)
    assert not is_outage(raised.value)


async def test_a_concurrent_change_answers_409_not_500(harness: Harness) -> None:
    user = await harness.create_user()
    router = APIRouter(route_class=AuthRoute)

    @router.patch("/profile")
    async def edit() -> dict[str, str]:
        await _stale_update(harness, user.id)
        return {"status": "changed"}

    app = FastAPI()
    app.include_router(router)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.patch("/profile")
    assert response.status_code == 409
    assert response.json() == {"detail": "Changed concurrently by another request; try again"}


async def test_a_postgresql_deadlock_is_a_concurrent_change(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        # SQLite runs one writer at a time (BEGIN IMMEDIATE): two writers queue, never deadlock.
        assert "sqlite" in database_url
        return
    dsn = database_url.replace("postgresql+asyncpg", "postgresql")
    setup = await asyncpg.connect(dsn)
    await setup.execute("CREATE TABLE pair (id int PRIMARY KEY); INSERT INTO pair VALUES (1), (2)")
    one, two = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        holding = [asyncio.Event(), asyncio.Event()]

        async def cross(connection: Any, me: int, first: int, second: int) -> None:
            async with connection.transaction():
                await connection.execute("UPDATE pair SET id = id WHERE id = $1", first)
                holding[me].set()
                await holding[1 - me].wait()  # both hold their first row: now cross over
                await connection.execute("UPDATE pair SET id = id WHERE id = $1", second)

        results = await asyncio.gather(
            cross(one, 0, 1, 2), cross(two, 1, 2, 1), return_exceptions=True
        )
    finally:
        for connection in (one, two, setup):
            await connection.close()
    errors = [result for result in results if isinstance(result, BaseException)]
    assert len(errors) == 1, results
    assert isinstance(errors[0], asyncpg.DeadlockDetectedError)
    assert is_concurrent_change(errors[0])
