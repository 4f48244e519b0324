"""Migration 0005 (signing keys) upgrades a 0004 database in place, on SQLite and PostgreSQL.

Every user and session survives, the new ``signing_keys`` table has the columns, nullability
and unique constraints the key ring relies on (two processes rotating at once must collide on
``generation``), an HS256 deployment leaves it empty, a key-pair deployment makes its first
current key and a published next key on the upgraded database, and the revision goes down to
0004 and up again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from alembic import command
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.migrate import _config
from tests.conftest import Harness
from tests.migration_helpers import USERS, database_at
from tests.signing_helpers import jwks, key_rows, me_status, verify_with_jwks

MakeHarness = Callable[..., Awaitable[Harness]]
# Column: nullable. The private key goes (NULL) once a key is rotated out; the times of
# activation (NULL for the published next key), rotation and retirement are NULL until they
# happen.
SIGNING_KEY_COLUMNS = {
    "id": False,
    "generation": False,
    "kid": False,
    "algorithm": False,
    "public_jwk": False,
    "sealed_private_key": True,
    "created_at": False,
    "activated_at": True,
    "rotated_at": True,
    "retired_at": True,
}
USERS_QUERY = (
    "SELECT id, username, username_key, email, email_key, hashed_password, disabled,"
    " is_verified, is_superuser, mfa_enabled FROM users ORDER BY id"
)
SESSIONS_QUERY = "SELECT id, user_id, revoked_at IS NULL FROM auth_sessions ORDER BY id"


async def _rows(engine: AsyncEngine, query: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(query))]


async def _database_at_0004(url: str) -> list[tuple[Any, ...]]:
    """Three users (carol a superuser) with sessions and refresh tokens ``rt-<session id>``;
    returns the sessions."""
    return await database_at(url, "0004", SESSIONS_QUERY)


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if "signing_keys" not in tables:
        return {"tables": tables}
    unique: list[set[str | None]] = [
        set(u["column_names"]) for u in inspector.get_unique_constraints("signing_keys")
    ]
    unique += [
        set(i["column_names"]) for i in inspector.get_indexes("signing_keys") if i.get("unique")
    ]
    return {
        "tables": tables,
        "columns": {c["name"]: c for c in inspector.get_columns("signing_keys")},
        "primary_key": inspector.get_pk_constraint("signing_keys")["constrained_columns"],
        "unique": unique,
    }


async def _inspect(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(_schema)


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(_config(c), revision))


async def _refresh(harness: Harness, session_id: int) -> dict[str, Any]:
    response = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": f"rt-{session_id}"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_0004_database_upgrades_in_place(
    database_url: str, make_harness: MakeHarness
) -> None:
    sessions = await _database_at_0004(database_url)
    engine = create_engine(database_url)
    try:
        users = await _rows(engine, USERS_QUERY)
        assert [row[1] for row in users] == list(USERS)
        assert "signing_keys" not in (await _inspect(engine))["tables"]
    finally:
        await engine.dispose()
    harness = await make_harness()  # HS256, migrated to head as `authdb migrate` does
    engine = harness.auth.core.engine
    assert await migrate.is_up_to_date(engine)  # at head: 0005 and any later revision
    assert await _rows(engine, USERS_QUERY) == users
    assert await _rows(engine, SESSIONS_QUERY) == sessions

    schema = await _inspect(engine)
    assert {name: c["nullable"] for name, c in schema["columns"].items()} == SIGNING_KEY_COLUMNS
    assert schema["primary_key"] == ["id"]
    assert {"generation"} in schema["unique"]
    assert {"kid"} in schema["unique"]
    if engine.dialect.name == "postgresql":
        columns = schema["columns"]
        assert str(columns["id"]["type"]) == "BIGINT"
        assert str(columns["generation"]["type"]) == "BIGINT"
        assert str(columns["sealed_private_key"]["type"]) == "BYTEA"
        for name in ("created_at", "activated_at", "rotated_at", "retired_at"):
            assert columns[name]["type"].timezone is True, name

    # HS256 needs no key pair: the table stays empty, and the sessions of before work.
    assert await key_rows(engine) == []
    tokens = await _refresh(harness, sessions[1][0])
    assert "kid" not in jwt.get_unverified_header(tokens["access_token"])
    assert await me_status(harness, tokens["access_token"]) == 200
    assert await jwks(harness) == {"keys": []}


async def test_a_key_pair_deployment_starts_on_the_upgraded_database(
    database_url: str, make_harness: MakeHarness
) -> None:
    """Upgraded and started with ES256: a current key and a next key are made, the old
    sessions refresh into ES256 tokens of the current key that verify against the JWKS, and a
    password sign-in works."""
    sessions = await _database_at_0004(database_url)
    harness = await make_harness(jwt_algorithm="ES256")
    engine = harness.auth.core.engine
    assert await migrate.is_up_to_date(engine)
    rows = await key_rows(engine)
    assert [(r["generation"], r["algorithm"], r["erased"], r["active"]) for r in rows] == [
        (1, "ES256", False, True),
        (2, "ES256", False, False),
    ]
    document = await jwks(harness)
    assert {key["kid"] for key in document["keys"]} == {r["kid"] for r in rows}
    for session_id, _, _ in sessions:
        access = (await _refresh(harness, session_id))["access_token"]
        assert jwt.get_unverified_header(access)["kid"] == rows[0]["kid"]
        verify_with_jwks(access, document)
        assert await me_status(harness, access) == 200
    access = (await harness.login("bob"))["access_token"]
    assert verify_with_jwks(access, document)["sub"] == "2"


async def test_downgrade_to_0004_and_up_again(database_url: str, make_harness: MakeHarness) -> None:
    sessions = await _database_at_0004(database_url)
    first = await make_harness(jwt_algorithm="EdDSA")
    old_keys = {r["kid"] for r in await key_rows(first.auth.core.engine)}
    assert len(old_keys) == 2
    await first.auth.shutdown()

    engine = create_engine(database_url)
    try:
        users = await _rows(engine, USERS_QUERY)
        await _downgrade(engine, "0004")
        assert await migrate.current_revision(engine) == "0004"
        assert "signing_keys" not in (await _inspect(engine))["tables"]
        assert await _rows(engine, USERS_QUERY) == users
        assert await _rows(engine, SESSIONS_QUERY) == sessions
        await migrate.upgrade(engine)
        assert await migrate.is_up_to_date(engine)
        assert set((await _inspect(engine))["columns"]) == set(SIGNING_KEY_COLUMNS)
        # The downgrade dropped the keys: the table comes back empty.
        assert await key_rows(engine) == []
        assert await _rows(engine, USERS_QUERY) == users
        assert await _rows(engine, SESSIONS_QUERY) == sessions
    finally:
        await engine.dispose()

    # Started again, authdb makes a new first key (and next key) and signs with the first.
    harness = await make_harness(jwt_algorithm="EdDSA")
    new_key, new_next = await key_rows(harness.auth.core.engine)
    assert (new_key["generation"], new_key["active"]) == (1, True)
    assert (new_next["generation"], new_next["active"]) == (2, False)
    assert not {new_key["kid"], new_next["kid"]} & old_keys
    access = (await harness.login("alice"))["access_token"]
    assert jwt.get_unverified_header(access) == {
        "alg": "EdDSA",
        "typ": "JWT",
        "kid": new_key["kid"],
    }
    assert await me_status(harness, access) == 200
    assert (
        await me_status(harness, (await _refresh(harness, sessions[0][0]))["access_token"]) == 200
    )
