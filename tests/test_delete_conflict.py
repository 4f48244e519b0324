"""Deleting a user whom the application's own rows reference (a foreign key to ``users.id``):
409 naming the table and nothing deleted, or the cascade the application declared. Every
deletion path: ``DELETE /users/me``, the admin ``DELETE /users/{id}``, ``auth.users.delete``
and ``authdb users delete``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.errors import Conflict, NotFound
from authdb.services.accounts import ACCOUNT_STILL_IN_USE
from authdb.services.core import ClientInfo
from authdb.services.hooks import UserSnapshot
from tests import test_pages
from tests.cli import run_cli
from tests.conftest import PASSWORD, Harness
from tests.test_pages import MakeSite

MakeHarness = Callable[..., Awaitable[Harness]]
make_site = test_pages.make_site  # the page tests' fixture: the service app, started
REFERENCED = (
    "This user is still referenced by rows in 'todos'; "
    "delete them first or declare ON DELETE CASCADE"
)


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    """authdb plus two tables of the application's: ``todos`` references users without a
    delete rule, ``notes`` with ON DELETE CASCADE."""
    harness = await make_harness()
    await create_app_tables(harness.auth.core.engine)
    return harness


async def create_app_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE todos (id INTEGER PRIMARY KEY, "
                "owner_id BIGINT NOT NULL REFERENCES users(id), title TEXT)"
            )
        )
        await conn.execute(
            text(
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, "
                "owner_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE, body TEXT)"
            )
        )


async def add(harness: Harness, table: str, owner_id: int, number: int = 1) -> None:
    async with harness.auth.core.engine.begin() as conn:
        await conn.execute(
            text(f"INSERT INTO {table} (id, owner_id) VALUES (:id, :owner)"),  # noqa: S608
            {"id": number, "owner": owner_id},
        )


async def count(harness: Harness, table: str) -> int:
    async with harness.auth.core.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())  # noqa: S608


async def exists(harness: Harness, user_id: int) -> bool:
    try:
        await harness.auth.users.get(user_id)
    except NotFound:
        return False
    return True


async def test_delete_me_is_409_and_deletes_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await harness.create_user("alice")
    await add(harness, "todos", alice.id)
    await add(harness, "notes", alice.id)
    deleted: list[int] = []

    @harness.auth.on("user_deleted")
    async def on_deleted(user: UserSnapshot, client: ClientInfo) -> None:
        deleted.append(user.id)

    headers = await harness.bearer()
    response = await harness.client.request(
        "DELETE", "/users/me", json={"password": PASSWORD}, headers=headers
    )
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/json")
    # The account holder is not told the application's table names; the log is.
    assert response.json() == {"detail": ACCOUNT_STILL_IN_USE}
    assert REFERENCED in caplog.text  # the developer learns which table
    # Nothing went: the user, their session, their rows in both tables.
    assert await exists(harness, alice.id)
    assert (await harness.client.get("/users/me", headers=headers)).status_code == 200
    assert (await count(harness, "todos"), await count(harness, "notes")) == (1, 1)
    await harness.auth.hooks.drain(grace=None)
    assert deleted == []

    # Once the application's rows are gone, the deletion goes through and cascades.
    async with harness.auth.core.engine.begin() as conn:
        await conn.execute(text("DELETE FROM todos"))
    response = await harness.client.request(
        "DELETE", "/users/me", json={"password": PASSWORD}, headers=headers
    )
    assert response.status_code == 204
    assert not await exists(harness, alice.id)
    assert await count(harness, "notes") == 0
    await harness.auth.hooks.drain(grace=None)
    assert deleted == [alice.id]


async def test_admin_delete_is_409_and_cascade_works(harness: Harness) -> None:
    await harness.create_user("root", is_superuser=True)
    bob = await harness.create_user("bob")
    carol = await harness.create_user("carol")
    await add(harness, "todos", bob.id)
    await add(harness, "notes", carol.id, 1)
    await add(harness, "notes", carol.id, 2)
    admin = await harness.bearer("root")

    refused = await harness.client.delete(f"/users/{bob.id}", headers=admin)
    assert (refused.status_code, refused.json()) == (409, {"detail": REFERENCED})
    assert await exists(harness, bob.id)

    cascaded = await harness.client.delete(f"/users/{carol.id}", headers=admin)
    assert cascaded.status_code == 204
    assert not await exists(harness, carol.id)
    assert await count(harness, "notes") == 0


async def test_auth_users_delete_raises_conflict(harness: Harness) -> None:
    bob = await harness.create_user("bob")
    await add(harness, "todos", bob.id)
    with pytest.raises(Conflict) as raised:
        await harness.auth.users.delete(bob.id)
    assert raised.value.detail == REFERENCED
    assert await exists(harness, bob.id)


async def test_cli_delete_is_one_line_and_non_zero(harness: Harness, database_url: str) -> None:
    bob = await harness.create_user("bob")
    await add(harness, "todos", bob.id)
    env = {
        "AUTHDB_DATABASE_URL": database_url,
        "AUTHDB_SECRET_KEY": "cli-test-secret-key-that-is-long-enough-0123456789",
    }
    result = run_cli(["users", "delete", "bob", "--yes"], env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {REFERENCED}"]
    assert "Traceback" not in result.stderr
    assert await exists(harness, bob.id)


async def test_the_account_page_refuses_with_409(make_site: MakeSite) -> None:
    """The hosted page's delete form shows the same refusal, not an error page."""
    site = await make_site()
    await create_app_tables(site.auth.core.engine)
    alice = await site.create_user("alice")
    async with site.auth.core.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO todos (id, owner_id) VALUES (1, :id)"), {"id": alice.id}
        )
    browser = await (await site.browser()).signed_in()
    refused = await browser.submit("/account", {"password": PASSWORD}, action="/account/delete")
    assert refused.status_code == 409
    assert "still owns data in this application" in refused.text
    assert "todos" not in refused.text
    assert (await browser.client.get("/users/me")).status_code == 200
