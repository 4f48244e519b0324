"""Per-account lockout after consecutive failed logins, kept in the database.

Keys are ``user:<id>`` for a known account (so its username and email add up) and
``name:<login>`` for a name that matches nobody, which locks in exactly the same way.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import LoginFailure, User
from authdb.errors import TooManyRequests
from authdb.names import login_key


def lock_key(user: User | None, login: str) -> str:
    return f"user:{user.id}" if user is not None else f"name:{login_key(login)[:380]}"


async def check(db: AsyncSession, key: str, now: datetime) -> None:
    """Raise TooManyRequests while ``key`` is locked."""
    locked_until = await db.scalar(select(LoginFailure.locked_until).where(LoginFailure.key == key))
    if locked_until is not None and locked_until > now:
        raise TooManyRequests(math.ceil((locked_until - now).total_seconds()))


async def record_failure(
    db: AsyncSession, key: str, now: datetime, *, max_failures: int, lockout: timedelta
) -> bool:
    """Count one failure atomically (an upsert); returns True when it locked the key."""
    dialect = db.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # An expired lock starts a fresh count.
    expired = LoginFailure.locked_until.is_not(None) & (LoginFailure.locked_until <= now)
    count = case((expired, 1), else_=LoginFailure.failure_count + 1)
    first_locks = max_failures == 1
    statement = (
        insert(LoginFailure)
        .values(
            key=key,
            failure_count=1,
            locked_until=now + lockout if first_locks else None,
            updated_at=now,
        )
        .on_conflict_do_update(
            index_elements=[LoginFailure.key],
            set_={
                "failure_count": count,
                "locked_until": case((count >= max_failures, now + lockout), else_=None),
                "updated_at": now,
            },
        )
        .returning(LoginFailure.locked_until)
    )
    locked_until = (await db.execute(statement)).scalar_one()
    return locked_until is not None


async def reset(db: AsyncSession, key: str) -> None:
    await db.execute(delete(LoginFailure).where(LoginFailure.key == key))
