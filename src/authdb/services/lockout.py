"""Per-account lockout after consecutive failed logins, kept in the database.

Keys are ``user:<id>`` for a known account (so its username and email add up) and
``name:<login>`` for a name that matches nobody, which locks in exactly the same way.

The verdict on an attempt is given *after* its password is checked, in one atomic step:
a wrong password is counted by an upsert whose result says whether it is the n-th failure
(401) or past the limit (429); a right one is accepted only if no lock stands at that moment
(``admit_success``). A burst of concurrent guesses therefore gets exactly ``max_failures``
answers that reveal anything, however many hashes were in flight, while concurrent logins
with the right password never meet a lock that only in-flight attempts would have set.
A lock already standing is seen before hashing (``locked_for``), so hammering a locked
account costs no CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, case, delete, literal, select
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
    """A counted failure: its place in the run of failures, and whether it set the lock."""

    key: str
    number: int
    locks: bool


class InFlight:
    """The failures this process is counting, by lockout key, until each has committed.

    A right password's write (authdb.services.direct_sign_in) may take another connection
    than the failures checked before it and overtake their writes; it waits for them instead
    (``settled``), so that a burst's failures lock the account before a right guess that came
    after them is admitted, as if the writes had queued in order.
    """

    def __init__(self) -> None:
        self._counting: dict[str, int] = {}
        self._settled: dict[str, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def counting(self, key: str) -> AsyncIterator[None]:
        """Mark a failure of ``key`` as being written for the block's duration."""
        self._counting[key] = self._counting.get(key, 0) + 1
        self._settled.setdefault(key, asyncio.Event())
        try:
            yield
        finally:
            self._counting[key] -= 1
            if not self._counting[key]:
                del self._counting[key]
                self._settled.pop(key).set()

    async def settled(self, key: str) -> None:
        """Return once no failure of ``key`` is being written by this process."""
        while (event := self._settled.get(key)) is not None:
            await event.wait()


def _utc(value: datetime) -> ColumnElement[datetime]:
    # Typed as the column is, so every backend binds it as an aware UTC timestamp.
    return literal(value, UTCDateTime)


async def locked_for(db: AsyncSession, key: str, now: datetime) -> int | None:
    """Seconds until ``key``'s lock ends, or None when it is not locked (a read)."""
    until = await db.scalar(select(LoginFailure.locked_until).where(LoginFailure.key == key))
    if until is None or until <= now:
        return None
    return math.ceil((until - now).total_seconds())


async def record_failure(
    db: AsyncSession, key: str, now: datetime, *, max_failures: int, lockout: timedelta
) -> Attempt:
    """Count one failed attempt against ``key`` (an atomic upsert).

    The failure that reaches ``max_failures`` sets the lock. Raises TooManyRequests when the
    account was already locked, so the caller answers 429 and reveals nothing of the guess.
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


async def admit_success(db: AsyncSession, key: str, now: datetime) -> int | None:
    """A right password: end the run of failures, unless a lock stands (then its seconds).

    The DELETE takes the row's lock, so a failure counted concurrently lands either before
    (and its lock is seen here) or after (and starts a fresh run).
    """
    unlocked = LoginFailure.locked_until.is_(None) | (LoginFailure.locked_until <= _utc(now))
    await db.execute(delete(LoginFailure).where(LoginFailure.key == key, unlocked))
    return await locked_for(db, key, now)


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
