"""The deployment's token-signing keys: which key signs, which keys verify, rotation.

With an HMAC algorithm (``HS256``, the default) the secret key does both and nothing here
touches the database. With ``RS256``, ``ES256`` or ``EdDSA`` the keys live in
``signing_keys``: the newest generation signs; a key replaced by ``rotate`` keeps verifying for
``verify_window`` (its last token's lifetime, and then some), and ``retire`` ends a key at once.

Every process keeps the key set in memory (``KeyRing``) and re-reads it every
``AUTHDB_JWT_KEYS_REFRESH_SECONDS``, and at once (at most once a second) when a token names a
``kid`` it does not know yet. So a rotation made by one process or by ``authdb keys`` reaches
every other one within that interval, and no process signs with a replaced key for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authdb import signing
from authdb.db.models import SigningKey
from authdb.errors import Conflict, NotFound
from authdb.sealing import Sealer, Unsealable
from authdb.services import audit
from authdb.services.core import ClientInfo, Core
from authdb.settings_checks import KEY_PAIR_ALGORITHMS
from authdb.tokens import JWTCodec, KeySet, VerificationKey

log = logging.getLogger("authdb")

_PURPOSE = "authdb signing key"
# Allowance for clocks that disagree between the processes of a deployment.
_CLOCK_SKEW = timedelta(minutes=1)
# A token naming an unknown kid makes a process re-read the keys at most this often.
_CATCH_UP_SECONDS = 1.0

KeyState = Literal["current", "retiring", "expired", "retired"]


class KeysNotInUse(Conflict):
    """Rotation asked of an HMAC deployment: it signs with the secret key, not a key pair."""

    def __init__(self, algorithm: str) -> None:
        super().__init__(
            f"AUTHDB_JWT_ALGORITHM is {algorithm}: tokens are signed with the secret key, so "
            "there is no key pair to rotate (set it to RS256, ES256 or EdDSA)"
        )


class RotationConflict(Conflict):
    """Another process made a new key at the same moment; theirs is current."""

    detail = "another rotation happened at the same time; the key it made is current"


class SecretMismatch(Conflict):
    """The current key does not open with this process's secret: its settings are not the
    deployment's, and a key made here could not be used by the running processes."""

    def __init__(self, kid: str) -> None:
        super().__init__(
            f"the current signing key {kid} does not open with this AUTHDB_SECRET_KEY: run "
            "this with the deployment's settings (its AUTHDB_SECRET_KEY)"
        )


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """One key as ``authdb keys list`` shows it; ``until`` is when a retiring key stops
    verifying, when an expired one stopped, or when a retired one was retired."""

    kid: str
    algorithm: str
    created_at: datetime
    state: KeyState
    until: datetime | None


def uses_key_pairs(core: Core) -> bool:
    return core.settings.jwt_algorithm in KEY_PAIR_ALGORITHMS


def verify_window(core: Core) -> timedelta:
    """How long a replaced key's tokens can still be valid: a process may sign with it for one
    refresh interval after the rotation, and its tokens live one access-token lifetime."""
    settings = core.settings
    return (
        timedelta(minutes=settings.access_token_expire_minutes)
        + timedelta(seconds=settings.jwt_keys_refresh_seconds)
        + _CLOCK_SKEW
    )


def _sealer(core: Core) -> Sealer:
    return core.sealer(_PURPOSE)


def _context(kid: str) -> str:
    return f"signing key {kid}"


async def _newest(db: AsyncSession) -> SigningKey | None:
    query = select(SigningKey).order_by(SigningKey.generation.desc()).limit(1)
    return (await db.scalars(query)).one_or_none()


class _NewKey:
    """A key pair made (off the event loop: RSA takes a while) before its transaction opens."""

    def __init__(self, core: Core, algorithm: str, private: signing.PrivateKey) -> None:
        self.algorithm = algorithm
        self.jwk = signing.public_jwk(private.public_key(), algorithm)
        self.kid: str = self.jwk["kid"]
        self.sealed = _sealer(core).seal(signing.private_bytes(private), _context(self.kid))

    @classmethod
    async def make(cls, core: Core, algorithm: str | None = None) -> _NewKey:
        algorithm = algorithm or core.settings.jwt_algorithm
        if algorithm not in KEY_PAIR_ALGORITHMS:
            raise KeysNotInUse(algorithm)
        private = await asyncio.to_thread(signing.generate, algorithm)
        return cls(core, algorithm, private)

    def install(
        self, db: AsyncSession, previous: SigningKey | None, now: datetime, client: ClientInfo
    ) -> None:
        """Make this key current in ``db``'s transaction; the previous one stops signing."""
        if previous is not None and previous.rotated_at is None:
            previous.rotated_at = now
        if previous is not None:
            previous.sealed_private_key = None  # never signs again: nothing to keep
        db.add(
            SigningKey(
                generation=1 if previous is None else previous.generation + 1,
                kid=self.kid,
                algorithm=self.algorithm,
                public_jwk=self.jwk,
                sealed_private_key=self.sealed,
                created_at=now,
            )
        )
        audit.record(
            db,
            "signing_key_rotated",
            client=client,
            now=now,
            kid=self.kid,
            algorithm=self.algorithm,
            previous=None if previous is None else previous.kid,
        )


async def rotate(core: Core, client: ClientInfo) -> str:
    """Make a new key of ``AUTHDB_JWT_ALGORITHM`` current at once; returns its kid.

    The replaced key's tokens keep verifying until they expire (``verify_window``). Raises
    KeysNotInUse under HMAC, RotationConflict when another process rotated at the same moment.
    """
    new = await _NewKey.make(core)
    now = core.clock()
    try:
        async with core.sessionmaker.begin() as db:
            newest = await _newest(db)
            _check_same_secret(core, newest)
            new.install(db, newest, now, client)
    except IntegrityError:
        raise RotationConflict from None
    await _reload_here(core)
    return new.kid


async def retire(core: Core, kid: str, client: ClientInfo) -> str | None:
    """Stop accepting ``kid``'s tokens at once (a leaked key). Retiring the current key makes
    a new one current in the same transaction; returns that new kid, else None.

    Raises NotFound for an unknown kid and RotationConflict as ``rotate`` does.
    """
    now = core.clock()
    async with core.sessionmaker() as db:
        newest = await _newest(db)
    # Retiring the current key needs a successor at once, even when run from a process
    # configured for HMAC (an operator's shell): of the retired key's algorithm then.
    new = None
    if newest is not None and newest.kid == kid:
        algorithm = core.settings.jwt_algorithm
        new = await _NewKey.make(core, algorithm if uses_key_pairs(core) else newest.algorithm)
    try:
        async with core.sessionmaker.begin() as db:
            key = await db.scalar(select(SigningKey).where(SigningKey.kid == kid))
            if key is None or key.retired_at is not None:
                raise NotFound(
                    f"no signing key {kid!r} in use"
                    if key is None
                    else f"signing key {kid!r} is already retired"
                )
            newest = await _newest(db)
            is_current = newest is not None and newest.kid == kid
            if is_current and new is None:
                raise RotationConflict  # it became current since we looked: try again
            if is_current:
                _check_same_secret(core, newest)
            key.retired_at = now
            key.sealed_private_key = None
            audit.record(db, "signing_key_retired", client=client, now=now, kid=kid)
            if is_current and new is not None:
                new.install(db, newest, now, client)
    except IntegrityError:
        raise RotationConflict from None
    await _reload_here(core)
    return new.kid if is_current and new is not None else None


def _check_same_secret(core: Core, current: SigningKey | None) -> None:
    """Refuse to make a key that the running processes could not open: the current key must
    open with this process's secret, or this process has other settings than the deployment."""
    if current is None or current.retired_at is not None or current.sealed_private_key is None:
        return
    try:
        _open_private(core, current)
    except Unsealable:
        raise SecretMismatch(current.kid) from None


async def list_keys(core: Core) -> list[KeyStatus]:
    """Every key ever made, newest first, with its state now."""
    now = core.clock()
    window = verify_window(core)
    async with core.sessionmaker() as db:
        keys = list(
            (await db.scalars(select(SigningKey).order_by(SigningKey.generation.desc()))).all()
        )
    statuses = []
    for key in keys:
        state: KeyState
        until: datetime | None
        if key.retired_at is not None:
            state, until = "retired", key.retired_at
        elif key.rotated_at is None:
            state, until = "current", None
        else:
            until = key.rotated_at + window
            state = "retiring" if now < until else "expired"
        statuses.append(KeyStatus(key.kid, key.algorithm, key.created_at, state, until))
    return statuses


async def _ensure_current(core: Core) -> None:
    """At start-up under a key-pair algorithm: make a new key unless a current key of that
    algorithm exists and opens with the configured secret. Reseals one sealed under a fallback
    secret. Of several processes starting at once, one makes the key; the others use it."""
    async with core.sessionmaker.begin() as db:
        newest = await _newest(db)
        reason = _needs_new_key(core, newest)
    if reason is None:
        return
    new = await _NewKey.make(core)  # outside any transaction: RSA takes a moment
    try:
        async with core.sessionmaker.begin() as db:
            newest = await _newest(db)
            if _needs_new_key(core, newest) is not None:  # nobody fixed it meanwhile
                level = logging.INFO if newest is None else logging.WARNING
                log.log(level, "making a new token signing key: %s", reason)
                new.install(db, newest, core.clock(), ClientInfo(user_agent="authdb-startup"))
    except IntegrityError:
        pass  # another process made one at the same moment: it is current, use it


def _needs_new_key(core: Core, newest: SigningKey | None) -> str | None:
    """Why the newest key cannot sign for this deployment, or None when it can."""
    if newest is None:
        return f"there is none yet ({core.settings.jwt_algorithm})"
    if newest.retired_at is not None or newest.sealed_private_key is None:
        return f"the newest one ({newest.kid}) is retired"
    if newest.algorithm != core.settings.jwt_algorithm:
        return (
            f"AUTHDB_JWT_ALGORITHM changed from {newest.algorithm} to {core.settings.jwt_algorithm}"
        )
    try:
        _, stale = _sealer(core).open(newest.sealed_private_key, _context(newest.kid))
    except Unsealable:
        return (
            f"the private key of {newest.kid} was sealed under a secret key that is no longer "
            "configured (list the old one in AUTHDB_SECRET_KEY_FALLBACKS to keep it)"
        )
    if stale:  # opened by a fallback secret: seal it under the current one
        private = signing.load_private(_open_private(core, newest))
        newest.sealed_private_key = _sealer(core).seal(
            signing.private_bytes(private), _context(newest.kid)
        )
    return None


def _open_private(core: Core, key: SigningKey) -> bytes:
    if key.sealed_private_key is None:
        raise Unsealable(f"signing key {key.kid} has no private key")
    plaintext, _ = _sealer(core).open(key.sealed_private_key, _context(key.kid))
    return plaintext


async def _load(core: Core, known: tuple[str, Any] | None) -> KeySet:
    """The key set now in the database. ``known`` is ``(kid, private key)`` already opened,
    reused while that key stays current (opening one costs a key derivation)."""
    now = core.clock()
    cutoff = now - verify_window(core)
    query = (
        select(SigningKey)
        .where(
            SigningKey.retired_at.is_(None),
            or_(SigningKey.rotated_at.is_(None), SigningKey.rotated_at > cutoff),
        )
        .order_by(SigningKey.generation.desc())
    )
    async with core.sessionmaker() as db:
        keys = list((await db.scalars(query)).all())
        newest = await _newest(db)
    if newest is None or not keys or keys[0].kid != newest.kid or newest.rotated_at is not None:
        raise Unsealable("no current signing key in the database")
    current = keys[0]
    if known is not None and known[0] == current.kid:
        private = known[1]
    else:
        private = signing.load_private(_open_private(core, current))
    verifying = {
        key.kid: VerificationKey(key.algorithm, signing.load_public(key.public_jwk)) for key in keys
    }
    return KeySet(
        signing_algorithm=current.algorithm,
        signing_key=private,
        signing_kid=current.kid,
        verifying=verifying,
        jwks=tuple(key.public_jwk for key in keys),
    )


async def _reload_here(core: Core) -> None:
    if core.keyring is not None:
        await core.keyring.reload()


class KeyRing:
    """This process's key set, kept fresh from the database; installs ``core.codec``."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._last_load = float("-inf")

    async def start(self) -> None:
        """Load the keys (making the first key pair if needed) and keep them fresh."""
        core = self._core
        if not uses_key_pairs(core):
            if core.secret is None:
                raise RuntimeError("the secret key is not loaded")
            self._install(KeySet.hmac(core.secret, core.settings.jwt_algorithm))
            return
        await _ensure_current(core)
        await self.reload()
        self._task = asyncio.create_task(self._refresh_forever(), name="authdb signing keys")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> None:
        """Read the key set from the database now."""
        if not uses_key_pairs(self._core):
            return
        async with self._lock:
            await self._reload_locked()

    async def _reload_locked(self) -> None:
        core = self._core
        current = core.codec.keys if core.codec is not None else None
        known = None
        if current is not None and current.signing_kid is not None:
            known = (current.signing_kid, current.signing_key)
        self._last_load = time.monotonic()
        self._install(await _load(core, known))

    async def catch_up(self) -> bool:
        """Re-read the keys for a token naming an unknown kid (perhaps a key rotated in
        elsewhere a moment ago). Waiters share one read, and reads are at least a second
        apart, so made-up kids cannot make every request query the database. False when the
        keys could not be read (logged)."""
        if not uses_key_pairs(self._core):
            return False
        asked = time.monotonic()
        try:
            async with self._lock:
                if self._last_load >= asked:
                    return True  # read after this token came: it saw what there is
                pause = self._last_load + _CATCH_UP_SECONDS - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                await self._reload_locked()
        except Exception as exc:
            log.error("could not re-read the token signing keys: %s", exc)
            return False
        return True

    def _install(self, keys: KeySet) -> None:
        settings = self._core.settings
        self._core.codec = JWTCodec(
            keys=keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            lifetime=timedelta(minutes=settings.access_token_expire_minutes),
        )

    async def _refresh_forever(self) -> None:
        interval = self._core.settings.jwt_keys_refresh_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception as exc:
                # Keep signing and verifying with the keys we have; the next round retries.
                log.error("could not refresh the token signing keys: %s", exc)
