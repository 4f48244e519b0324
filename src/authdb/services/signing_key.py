"""The token signing key: from settings, or generated once and kept in the database."""

from __future__ import annotations

import logging
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from authdb.db.models import Meta
from authdb.services.core import Core

log = logging.getLogger("authdb")
_KEY = "secret_key"


async def load_signing_key(core: Core, *, warn: bool = True) -> str:
    """The configured key, else the stored one, else a new random one that every worker shares.

    ``warn=False`` (CLI commands) skips the warning about the generated key: the service warns.
    """
    if core.settings.secret_key is not None:
        return core.settings.secret_key.get_secret_value()
    async with core.sessionmaker() as db:
        stored = await db.scalar(select(Meta.value).where(Meta.key == _KEY))
    if stored is None:
        stored = await _generate(core)
    if warn:
        log.warning(
            "AUTHDB_SECRET_KEY is not set: using the signing key generated and stored in the "
            "database. Set AUTHDB_SECRET_KEY to manage it yourself."
        )
    return stored


async def _generate(core: Core) -> str:
    try:
        async with core.sessionmaker.begin() as db:
            db.add(Meta(key=_KEY, value=secrets.token_urlsafe(64)))
    except IntegrityError:
        pass  # another worker stored one first; everybody uses that one
    async with core.sessionmaker() as db:
        return (await db.scalars(select(Meta.value).where(Meta.key == _KEY))).one()


async def load_fallback_keys(core: Core) -> tuple[str, ...]:
    """Earlier secrets to try when opening sealed values: the configured fallbacks and, once
    ``AUTHDB_SECRET_KEY`` is set, the key generated before it (so MFA survives the switch)."""
    keys = [key.get_secret_value() for key in core.settings.secret_key_fallbacks]
    if core.settings.secret_key is not None:
        async with core.sessionmaker() as db:
            generated = await db.scalar(select(Meta.value).where(Meta.key == _KEY))
        if generated is not None:
            keys.append(generated)
    return tuple(keys)
