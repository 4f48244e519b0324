"""Migration 0006 (passkeys) upgrades a 0005 database in place, on SQLite and PostgreSQL.

Users, sessions and an MFA challenge in flight survive; ``passkeys`` and
``passkey_challenges`` have the columns, keys and constraints the services rely on (64-bit ids
on PostgreSQL, a unique credential id, removal with the user); the old challenge is a password
one; and the revision goes down to 0005 and up again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.migrate import _config
from tests.migration_helpers import USERS, database_at

PASSKEY_COLUMNS = {  # column: nullable
    "id": False,
    "user_id": False,
    "credential_id": False,
    "user_handle": False,
    "public_key": False,
    "sign_count": False,
    "name": False,
    "aaguid": True,
    "backup_eligible": False,
    "backed_up": False,
    "created_at": False,
    "last_used_at": True,
}
SESSIONS_QUERY = "SELECT id, user_id, revoked_at IS NULL FROM auth_sessions ORDER BY id"


async def _rows(engine: AsyncEngine, query: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(query))]


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    schema: dict[str, Any] = {
        "tables": tables,
        "challenge_columns": {c["name"] for c in inspector.get_columns("mfa_challenges")},
    }
    if "passkeys" in tables:
        unique = [set(u["column_names"]) for u in inspector.get_unique_constraints("passkeys")]
        unique += [
            set(i["column_names"]) for i in inspector.get_indexes("passkeys") if i.get("unique")
        ]
        schema |= {
            "columns": {c["name"]: c for c in inspector.get_columns("passkeys")},
            "unique": unique,
            "foreign_keys": inspector.get_foreign_keys("passkeys"),
            "spent_pk": inspector.get_pk_constraint("passkey_challenges")["constrained_columns"],
        }
    return schema


async def _inspect(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(_schema)


async def _add_challenge(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO mfa_challenges (user_id, token_hash, created_at, expires_at,"
                " failures) VALUES (1, :hash, :now, :later, 0)"
            ),
            {"hash": "a" * 64, "now": now, "later": now + timedelta(minutes=5)},
        )


async def _add_passkey(engine: AsyncEngine, user_id: int, credential_id: bytes) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO passkeys (user_id, credential_id, user_handle, public_key,"
                " sign_count, name, backup_eligible, backed_up, created_at) VALUES (:user,"
                " :cid, :handle, :key, 0, 'Laptop', false, false, :now)"
            ),
            {
                "user": user_id,
                "cid": credential_id,
                "handle": b"h" * 32,
                "key": b"k",
                "now": datetime.now(UTC),
            },
        )


async def test_a_0005_database_upgrades_in_place_and_down_again(database_url: str) -> None:
    sessions = await database_at(database_url, "0005", SESSIONS_QUERY)
    engine = create_engine(database_url)
    try:
        await _add_challenge(engine)
        assert "passkeys" not in (await _inspect(engine))["tables"]
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()  # 0006 or later
        assert await _rows(engine, SESSIONS_QUERY) == sessions
        assert [row[0] for row in await _rows(engine, "SELECT username FROM users")] == list(USERS)
        # The challenge in flight was opened by a password: a passkey may complete it.
        assert await _rows(engine, "SELECT first_factor FROM mfa_challenges") == [("password",)]

        schema = await _inspect(engine)
        assert {n: c["nullable"] for n, c in schema["columns"].items()} == PASSKEY_COLUMNS
        assert {"credential_id"} in schema["unique"]
        assert schema["spent_pk"] == ["challenge_hash"]
        [owner] = schema["foreign_keys"]
        assert owner["referred_table"] == "users"
        assert owner["options"].get("ondelete") == "CASCADE"
        if engine.dialect.name == "postgresql":
            assert str(schema["columns"]["id"]["type"]) == "BIGINT"
            assert str(schema["columns"]["credential_id"]["type"]) == "BYTEA"

        # One credential, one row, whoever registers it; a user's passkeys go with the user.
        await _add_passkey(engine, 1, b"credential-1")
        with pytest.raises(IntegrityError):
            await _add_passkey(engine, 2, b"credential-1")
        await _add_passkey(engine, 2, b"credential-2")
        async with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                await connection.execute(text("PRAGMA foreign_keys=ON"))
            await connection.execute(text("DELETE FROM users WHERE id = 2"))
        assert await _rows(engine, "SELECT user_id FROM passkeys") == [(1,)]

        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(_config(c), "0005"))
        schema = await _inspect(engine)
        assert not {"passkeys", "passkey_challenges"} & schema["tables"]
        assert "first_factor" not in schema["challenge_columns"]
        await migrate.upgrade(engine)
        assert await migrate.is_up_to_date(engine)
        assert await _rows(engine, "SELECT first_factor FROM mfa_challenges") == [("password",)]
    finally:
        await engine.dispose()
