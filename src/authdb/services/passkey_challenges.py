"""Spending WebAuthn challenges: each works once (SPEC, "Passkeys")."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import PasskeyChallenge
from authdb.services.core import Core


async def spend(core: Core, challenge: bytes, expires_at: datetime) -> bool:
    """Record ``challenge`` as used, in a transaction of its own; False if it was already.

    One INSERT that skips a conflict, so that of two requests presenting the same challenge at
    once exactly one wins on either database. The row lives until the challenge expires.
    """
    digest = hashlib.sha256(challenge).hexdigest()
    async with core.sessionmaker.begin() as db:
        dialect = db.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(PasskeyChallenge)
            .values(challenge_hash=digest, expires_at=expires_at)
            .on_conflict_do_nothing()
        )
        result = await db.execute(statement)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def prune_spent_challenges(db: AsyncSession, now: datetime) -> int:
    """Forget spent challenges that have expired (they are refused as expired anyway)."""
    result = await db.execute(delete(PasskeyChallenge).where(PasskeyChallenge.expires_at <= now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
