"""A database at an older revision with users, sessions and refresh tokens, for migration tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.names import email_key, username_key
from authdb.passwords import Hasher
from authdb.tokens import hash_opaque_token
from tests.cli import FAST_HASHING
from tests.conftest import PASSWORD

USERS = ("alice", "bob", "carol")


async def database_at(url: str, revision: str, sessions_query: str) -> list[tuple[Any, ...]]:
    """Three users (ids 1-3, carol a superuser, password ``PASSWORD``) with API and browser
    sessions and refresh tokens ``rt-<session id>``, at ``revision``; returns the rows of
    ``sessions_query``."""
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine, revision)
        hasher = Hasher(
            time_cost=FAST_HASHING["password_hash_time_cost"],
            memory_kib=FAST_HASHING["password_hash_memory_kib"],
        )
        hashed = await hasher.hash(PASSWORD)
        now = datetime.now(UTC)
        async with engine.begin() as connection:
            for name in USERS:  # ids 1, 2, 3
                await connection.execute(
                    text(
                        "INSERT INTO users (username, username_key, email, email_key,"
                        " disabled, hashed_password, is_verified, is_superuser, created_at,"
                        " updated_at) VALUES (:u, :uk, :e, :ek, false, :h, true, :su,"
                        " :now, :now)"
                    ),
                    {
                        "u": name,
                        "uk": username_key(name),
                        "e": f"{name}@example.com",
                        "ek": email_key(f"{name}@example.com"),
                        "h": hashed,
                        "su": name == "carol",
                        "now": now,
                    },
                )
            for user_id, cookie in ((1, None), (2, None), (1, "c" * 64), (3, None)):
                session_id = await connection.scalar(
                    text(
                        "INSERT INTO auth_sessions (user_id, created_at, last_used_at,"
                        " expires_at, cookie_hash) VALUES (:user, :now, :now, :later, :cookie)"
                        " RETURNING id"
                    ),
                    {
                        "user": user_id,
                        "now": now,
                        "later": now + timedelta(days=7),
                        "cookie": cookie,
                    },
                )
                await connection.execute(
                    text(
                        "INSERT INTO refresh_tokens (session_id, token_hash, created_at)"
                        " VALUES (:session, :hash, :now)"
                    ),
                    {
                        "session": session_id,
                        "hash": hash_opaque_token(f"rt-{session_id}"),
                        "now": now,
                    },
                )
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(text(sessions_query))]
    finally:
        await engine.dispose()
