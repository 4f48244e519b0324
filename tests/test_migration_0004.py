"""Migration 0004 (multi-factor authentication) upgrades a 0003 database in place, on SQLite and
PostgreSQL.

Every user and session survives (a batch rebuild of ``users`` on SQLite would have cascaded to
the sessions), nobody has MFA on afterwards, the three new tables go with their user (ON DELETE
CASCADE), and the revision goes down to 0003 and up again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
from alembic import command
from sqlalchemy import Connection, Select, column, func, inspect, select, text
from sqlalchemy import table as table_clause
from sqlalchemy.ext.asyncio import AsyncEngine

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.migrate import _config
from tests.conftest import PASSWORD, Harness
from tests.migration_helpers import USERS, database_at

MakeHarness = Callable[..., Awaitable[Harness]]
MFA_GRANT = "urn:authdb:params:oauth:grant-type:mfa"

MFA_TABLES = {
    "mfa_totp": {"user_id", "sealed_secret", "created_at", "confirmed_at", "last_used_step"},
    "mfa_recovery_codes": {"id", "user_id", "code_hash", "created_at", "used_at"},
    "mfa_challenges": {
        "id", "user_id", "token_hash", "created_at", "expires_at", "failures", "used_at",
    },
}  # fmt: skip
USERS_QUERY = (
    "SELECT id, username, username_key, email, email_key, pending_email, hashed_password,"
    " disabled, is_verified, is_superuser FROM users ORDER BY id"
)


async def _rows(engine: AsyncEngine, query: str | Select[Any]) -> list[tuple[Any, ...]]:
    statement = text(query) if isinstance(query, str) else query
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(statement)]


async def _users(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    return await _rows(engine, USERS_QUERY)


SESSIONS_QUERY = "SELECT id, user_id, revoked_at IS NULL FROM auth_sessions ORDER BY id"


async def _sessions(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    return await _rows(engine, SESSIONS_QUERY)


async def _database_at_0003(url: str) -> list[tuple[Any, ...]]:
    """Three users (carol a superuser) with API and browser sessions; returns the sessions."""
    return await database_at(url, "0003", SESSIONS_QUERY)


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    return {
        "tables": tables,
        "users": {c["name"]: c for c in inspector.get_columns("users")},
        "columns": {
            t: {c["name"]: c for c in inspector.get_columns(t)} for t in MFA_TABLES if t in tables
        },
        "foreign_keys": {t: inspector.get_foreign_keys(t) for t in MFA_TABLES if t in tables},
    }


async def _inspect(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(_schema)


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(_config(c), revision))


async def _give_mfa_rows(engine: AsyncEngine, user_id: int) -> None:
    """A confirmed authenticator, two recovery codes and a challenge for ``user_id``."""
    now = datetime.now(UTC)
    values = {"user": user_id, "now": now, "later": now + timedelta(minutes=5)}
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO mfa_totp (user_id, sealed_secret, created_at, confirmed_at)"
                " VALUES (:user, :sealed, :now, :now)"
            ),
            {**values, "sealed": b"\x01" + bytes(40)},
        )
        for n in range(2):
            await connection.execute(
                text(
                    "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at)"
                    " VALUES (:user, :hash, :now)"
                ),
                {**values, "hash": f"{user_id}-{n}".ljust(64, "0")},
            )
        await connection.execute(
            text(
                "INSERT INTO mfa_challenges (user_id, token_hash, created_at, expires_at, failures)"
                " VALUES (:user, :hash, :now, :later, 0)"
            ),
            {**values, "hash": f"challenge-{user_id}".ljust(64, "0")},
        )
        await connection.execute(
            text("UPDATE users SET mfa_enabled = true WHERE id = :user"), values
        )


async def _mfa_row_counts(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Rows per user in each MFA table."""
    counts = {}
    for name in MFA_TABLES:
        user_id = column("user_id")
        query = select(user_id, func.count()).select_from(table_clause(name, user_id))
        counts[name] = await _rows(engine, query.group_by(user_id).order_by(user_id))
    return counts


async def test_a_0003_database_upgrades_in_place(
    database_url: str, make_harness: MakeHarness
) -> None:
    sessions = await _database_at_0003(database_url)
    engine = create_engine(database_url)
    try:
        users = await _users(engine)
        assert [row[1] for row in users] == list(USERS)
    finally:
        await engine.dispose()
    harness = await make_harness()  # migrates to head, as `authdb migrate` does
    engine = harness.auth.core.engine
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert await _users(engine) == users
    assert await _sessions(engine) == sessions
    assert await _rows(engine, "SELECT id, mfa_enabled FROM users ORDER BY id") == [
        (1, False), (2, False), (3, False)
    ]  # fmt: skip

    schema = await _inspect(engine)
    assert set(MFA_TABLES) <= schema["tables"]
    assert schema["users"]["mfa_enabled"]["nullable"] is False
    for table, columns in MFA_TABLES.items():
        # At head: later revisions may add columns (0006: mfa_challenges.first_factor).
        assert columns <= set(schema["columns"][table]), table
        (foreign_key,) = schema["foreign_keys"][table]
        assert foreign_key["constrained_columns"] == ["user_id"]
        assert (foreign_key["referred_table"], foreign_key["referred_columns"]) == (
            "users",
            ["id"],
        )
        assert foreign_key["options"].get("ondelete", "").upper() == "CASCADE", table
    if harness.auth.core.engine.dialect.name == "postgresql":
        # Tables that grow with traffic have 64-bit keys (SPEC, "Identifiers").
        for table in ("mfa_recovery_codes", "mfa_challenges"):
            assert str(schema["columns"][table]["id"]["type"]) == "BIGINT", table

    # The users of before sign in, turn MFA on and sign in with it, and their sessions work.
    response = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": f"rt-{sessions[1][0]}"}
    )
    assert response.status_code == 200, response.text
    headers = await harness.bearer("alice")
    setup = await harness.client.post(
        "/users/me/mfa/totp/setup", json={"password": PASSWORD}, headers=headers
    )
    assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    now = datetime.now(UTC) - timedelta(minutes=5)
    harness.auth.core.clock = lambda: now
    confirm = await harness.client.post(
        "/users/me/mfa/totp/confirm", json={"code": pyotp.TOTP(secret).at(now)}, headers=headers
    )
    assert confirm.status_code == 200, confirm.text
    challenge = await harness.client.post(
        "/token", data={"username": "alice", "password": PASSWORD}
    )
    assert challenge.status_code == 403, challenge.text
    signed_in = await harness.client.post(
        "/token",
        data={
            "grant_type": MFA_GRANT,
            "mfa_token": challenge.json()["mfa_token"],
            "otp": pyotp.TOTP(secret).at(now, counter_offset=1),
        },
    )
    assert signed_in.status_code == 200, signed_in.text


async def test_deleting_a_user_deletes_their_mfa_rows(
    database_url: str, make_harness: MakeHarness
) -> None:
    await _database_at_0003(database_url)
    harness = await make_harness()
    engine = harness.auth.core.engine
    await _give_mfa_rows(engine, 1)
    await _give_mfa_rows(engine, 2)
    assert await _mfa_row_counts(engine) == {
        "mfa_totp": [(1, 1), (2, 1)],
        "mfa_recovery_codes": [(1, 2), (2, 2)],
        "mfa_challenges": [(1, 1), (2, 1)],
    }
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM users WHERE id = 1"))
    # The database does it (ON DELETE CASCADE), whoever deletes the user.
    assert await _mfa_row_counts(engine) == {
        "mfa_totp": [(2, 1)],
        "mfa_recovery_codes": [(2, 2)],
        "mfa_challenges": [(2, 1)],
    }
    assert [row[1] for row in await _users(engine)] == ["bob", "carol"]


async def test_downgrade_to_0003_and_up_again(database_url: str, make_harness: MakeHarness) -> None:
    sessions = await _database_at_0003(database_url)
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
        users = await _users(engine)
        await _give_mfa_rows(engine, 1)
        await _downgrade(engine, "0003")
        assert await migrate.current_revision(engine) == "0003"
        schema = await _inspect(engine)
        assert not set(MFA_TABLES) & schema["tables"]
        assert "mfa_enabled" not in schema["users"]
        assert await _users(engine) == users
        assert await _sessions(engine) == sessions
        await migrate.upgrade(engine)
        assert await migrate.is_up_to_date(engine)
        assert await _users(engine) == users
        assert await _sessions(engine) == sessions
        # The downgrade dropped the MFA data; nobody comes back with MFA half on.
        assert await _rows(engine, "SELECT DISTINCT mfa_enabled FROM users") == [(False,)]
        assert await _mfa_row_counts(engine) == {name: [] for name in MFA_TABLES}
    finally:
        await engine.dispose()
    harness = await make_harness()
    assert (await harness.login("alice"))["token_type"] == "bearer"
