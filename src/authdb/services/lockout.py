"""Per-account lockout after consecutive failed logins, kept in the database.

Keys are ``user:<id>`` for a known account (so its username and email add up) and
``name:<login>`` for a name that matches nobody, which locks in exactly the same way.

An attempt is counted *before* its password is checked and forgiven on success. Counting
afterwards would let a burst of concurrent requests all pass the "is it locked?" check
while their hashes are still being computed, and so try far more than the allowed number
of passwords; with the count taken first, the database's atomic upsert decides which
attempts may go ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, case, delete, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import LoginFailure, User, UTCDateTime
from authdb.errors import TooManyRequests
from authdb.names import login_key

# The primary key is 400 characters; the prefix takes a few.
_MAX_NAME = 380


def lock_key(user: User | None, login: str) -> str:
    """The lockout counter a login attempt belongs to."""
    return f"user:{user.id}" if user is not None else f"name:{login_key(login)[:_MAX_NAME]}"


@dataclass(frozen=True, slots=True)
class Attempt:
    """An admitted attempt: its place in the run of failures, and whether it is the last."""

    key: str
    number: int
    locks: bool


def _utc(value: datetime) -> ColumnElement[datetime]:
    # Typed as the column is, so every backend binds it as an aware UTC timestamp.
    return literal(value, UTCDateTime)


async def begin_attempt(
    db: AsyncSession, key: str, now: datetime, *, max_failures: int, lockout: timedelta
) -> Attempt:
    """Count one attempt against ``key`` (an upsert); raise TooManyRequests while it is locked.

    The attempt that reaches ``max_failures`` sets the lock already; ``forgive`` lifts it
    again if that attempt's password turns out to be right.
    """
    dialect = db.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    locked_until = LoginFailure.locked_until
    locked = locked_until.is_not(None) & (locked_until > _utc(now))
    expired = locked_until.is_not(None) & (locked_until <= _utc(now))
    # While locked the count stays just over the limit; an expired lock starts a fresh run.
    number = case(
        (locked, max_failures + 1),
        (expired, 1),
        else_=LoginFailure.failure_count + 1,
    )
    until = case(
        (locked, locked_until),
        (number >= max_failures, _utc(now + lockout)),
        else_=None,
    )
    statement = (
        insert(LoginFailure)
        .values(
            key=key,
            failure_count=1,
            locked_until=now + lockout if max_failures == 1 else None,
            updated_at=now,
        )
        .on_conflict_do_update(
            index_elements=[LoginFailure.key],
            set_={"failure_count": number, "locked_until": until, "updated_at": now},
        )
        .returning(LoginFailure.failure_count, LoginFailure.locked_until)
    )
    count, until_value = (await db.execute(statement)).one()
    if count > max_failures:
        assert until_value is not None  # the count passes the limit only under a lock
        raise TooManyRequests(math.ceil((until_value - now).total_seconds()))
    return Attempt(key=key, number=count, locks=count == max_failures)


async def prune(db: AsyncSession, now: datetime, *, idle: timedelta) -> int:
    """Delete unlocked counters untouched for ``idle``; returns how many.

    Names that match nobody would otherwise pile up. Forgetting an old run of failures
    grants no more guesses than waiting out a lock does, as long as ``idle`` is longer.
    """
    stale = (LoginFailure.updated_at < _utc(now - idle)) & (
        LoginFailure.locked_until.is_(None) | (LoginFailure.locked_until <= _utc(now))
    )
    result = await db.execute(delete(LoginFailure).where(stale))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def forgive(db: AsyncSession, key: str) -> None:
    """A right password ends the run of failures (and a lock its own attempt set)."""
    await db.execute(delete(LoginFailure).where(LoginFailure.key == key))
