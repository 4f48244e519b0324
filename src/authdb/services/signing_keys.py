"""The deployment's token-signing keys: which key signs, which keys verify, rotation.

With an HMAC algorithm (``HS256``, the default) the secret key does both and nothing here
touches the database. With ``RS256``, ``ES256`` or ``EdDSA`` the keys live in
``signing_keys``: the current key signs, and the next key is already published, so verifiers
holding the JWKS know it before ``rotate`` makes it current (and publishes another). A key
replaced by ``rotate`` keeps verifying for ``verify_window`` (its last token's lifetime, and
then some); ``retire`` ends a key at once.

Every process keeps the key set in memory (``KeyRing``) and re-reads it every
``AUTHDB_JWT_KEYS_REFRESH_SECONDS``, and at once (at most once a second) when a token names a
``kid`` it does not know yet. So a rotation made by one process or by ``authdb keys`` reaches
every other one within that interval, and no process signs with a replaced key for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, or_, select, text
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
# Key changes on PostgreSQL serialize on this advisory lock (an arbitrary 64-bit constant).
_ADVISORY_LOCK = 0x61757468_6462_6B65
# Allowance for clocks that disagree between the processes of a deployment.
_CLOCK_SKEW = timedelta(minutes=1)
# A token naming an unknown kid makes a process re-read the keys at most this often.
_CATCH_UP_SECONDS = 1.0

# What our kids look like (RFC 7638 thumbprints, base64url); anything else names no key.
_KID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")

KeyState = Literal["current", "next", "retiring", "expired", "retired"]


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


class AlgorithmMismatch(Conflict):
    """This process's AUTHDB_JWT_ALGORITHM is not the current key's: rotating here would switch
    the running deployment's algorithm behind its back."""

    def __init__(self, current: str, configured: str) -> None:
        super().__init__(
            f"the current signing key is {current} but AUTHDB_JWT_ALGORITHM is {configured} "
            "here: run this with the deployment's settings; to change the algorithm, change "
            "AUTHDB_JWT_ALGORITHM and restart the service"
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


@dataclass(slots=True)
class _Keys:
    """The rows that decide what happens next, read in one transaction."""

    current: SigningKey | None  # activated, signing
    next: SigningKey | None  # published, not yet signing
    top_generation: int


async def _read(db: AsyncSession) -> _Keys:
    """The current and next keys. In a transaction that changes keys, on PostgreSQL, first
    takes a transaction-scoped advisory lock, so that its reads cannot interleave with another
    process's changes (SQLite's BEGIN IMMEDIATE already serializes writers)."""
    if db.in_transaction() and db.get_bind().dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    query = (
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None), SigningKey.rotated_at.is_(None))
        .order_by(SigningKey.generation.desc())
    )
    rows = list((await db.scalars(query)).all())
    current = next((row for row in rows if row.activated_at is not None), None)
    upcoming = next((row for row in rows if row.activated_at is None), None)
    top = await db.scalar(select(func.max(SigningKey.generation)))
    return _Keys(current, upcoming, int(top or 0))


class _NewKey:
    """A key pair made (off the event loop: RSA takes a while) before its transaction opens."""

    def __init__(self, core: Core, algorithm: str, private: signing.PrivateKey) -> None:
        self.algorithm = algorithm
        self.jwk = signing.public_jwk(private.public_key(), algorithm)
        self.kid: str = self.jwk["kid"]
        self.sealed = _sealer(core).seal(signing.private_bytes(private), _context(self.kid))

    @classmethod
    async def make(cls, core: Core, algorithm: str) -> _NewKey:
        if algorithm not in KEY_PAIR_ALGORITHMS:
            raise KeysNotInUse(algorithm)
        private = await asyncio.to_thread(signing.generate, algorithm)
        return cls(core, algorithm, private)

    def row(self, generation: int, now: datetime, *, active: bool) -> SigningKey:
        return SigningKey(
            generation=generation,
            kid=self.kid,
            algorithm=self.algorithm,
            public_jwk=self.jwk,
            sealed_private_key=self.sealed,
            created_at=now,
            activated_at=now if active else None,
        )


def _can_sign(core: Core, key: SigningKey | None, algorithm: str) -> bool:
    """Whether ``key`` can sign for this deployment: its algorithm, and a private key that
    opens with the configured secret."""
    if key is None or key.algorithm != algorithm or key.sealed_private_key is None:
        return False
    try:
        _open_private(core, key)
    except Unsealable:
        return False
    return True


@dataclass(slots=True)
class _Plan:
    """Keys made before a transaction: the next key to publish, and a spare to make current
    at once when there is no usable next key."""

    algorithm: str
    fresh_next: _NewKey
    spare: _NewKey | None

    @classmethod
    async def make(cls, core: Core, algorithm: str, *, spare: bool) -> _Plan:
        fresh = await _NewKey.make(core, algorithm)
        return cls(algorithm, fresh, await _NewKey.make(core, algorithm) if spare else None)

    def apply(
        self,
        core: Core,
        db: AsyncSession,
        keys: _Keys,
        now: datetime,
        client: ClientInfo,
        *,
        rotate: bool,
    ) -> str | None:
        """In ``db``'s transaction: with ``rotate``, the next key (or the spare) becomes current
        and the current one stops signing; a fresh next key is published whenever the old
        one is used up or unusable. Returns the new current kid, if any.

        Raises RotationConflict when the keys changed so that the spare is needed but absent.
        """
        top = keys.top_generation
        promoted: SigningKey | None = None
        if rotate:
            if _can_sign(core, keys.next, self.algorithm):
                promoted = keys.next
            elif self.spare is not None:
                top += 1
                promoted = self.spare.row(top, now, active=False)
                db.add(promoted)
            else:
                raise RotationConflict
            assert promoted is not None
            promoted.activated_at = now
            if keys.current is not None:
                keys.current.rotated_at = now
                keys.current.sealed_private_key = None  # never signs again: nothing to keep
        if promoted is None and _can_sign(core, keys.next, self.algorithm):
            return None  # the published next key stays
        if keys.next is not None and keys.next is not promoted:
            # Never signed anything (another algorithm, or a secret gone): unpublish it.
            keys.next.retired_at = now
            keys.next.sealed_private_key = None
        db.add(self.fresh_next.row(top + 1, now, active=False))
        audit.record(
            db,
            "signing_key_rotated" if promoted is not None else "signing_key_published",
            client=client,
            now=now,
            kid=promoted.kid if promoted is not None else self.fresh_next.kid,
            algorithm=self.algorithm,
            previous=None if keys.current is None or promoted is None else keys.current.kid,
            next=self.fresh_next.kid,
        )
        return None if promoted is None else promoted.kid


def _deployment_algorithm(core: Core, current: SigningKey | None) -> str:
    """The algorithm new keys get: the configured one; from a shell configured for HMAC (an
    operator retiring a leaked key), the current key's."""
    if uses_key_pairs(core):
        return core.settings.jwt_algorithm
    if current is None:
        raise KeysNotInUse(core.settings.jwt_algorithm)
    return current.algorithm


async def rotate(core: Core, client: ClientInfo) -> str:
    """Make the published next key current at once (or a new one, when there is none that
    can sign) and publish a fresh next key; returns the new current kid.

    The replaced key's tokens keep verifying until they expire (``verify_window``). Raises
    KeysNotInUse under HMAC, AlgorithmMismatch when the current key has another algorithm than
    this process's settings, SecretMismatch when it does not open with this secret, and
    RotationConflict when another process rotated at the same moment.
    """
    if not uses_key_pairs(core):
        raise KeysNotInUse(core.settings.jwt_algorithm)
    algorithm = core.settings.jwt_algorithm
    async with core.sessionmaker() as db:
        before = await _read(db)
    plan = await _Plan.make(core, algorithm, spare=not _can_sign(core, before.next, algorithm))
    try:
        async with core.sessionmaker.begin() as db:
            keys = await _read(db)
            _check_same_secret(core, keys.current)
            if keys.current is not None and keys.current.algorithm != algorithm:
                raise AlgorithmMismatch(keys.current.algorithm, algorithm)
            kid = plan.apply(core, db, keys, core.clock(), client, rotate=True)
    except IntegrityError:
        raise RotationConflict from None
    await _reload_here(core)
    assert kid is not None
    return kid


async def retire(core: Core, kid: str, client: ClientInfo) -> str | None:
    """Stop accepting ``kid``'s tokens at once (a leaked key). Retiring the current key makes
    the next one current in the same transaction (retiring the next one publishes another);
    returns the new current kid, else None.

    Raises NotFound for an unknown or already retired kid, and SecretMismatch and
    RotationConflict as ``rotate`` does.
    """
    if not _KID_SHAPE.fullmatch(kid):
        raise NotFound(f"no signing key {kid[:64]!r}")
    async with core.sessionmaker() as db:
        before = await _read(db)
    plan: _Plan | None = None
    for role in (before.current, before.next):
        if role is not None and role.kid == kid:
            algorithm = _deployment_algorithm(core, before.current or role)
            spare = role is before.next or not _can_sign(core, before.next, algorithm)
            plan = await _Plan.make(core, algorithm, spare=spare)
    now = core.clock()
    try:
        async with core.sessionmaker.begin() as db:
            key = await db.scalar(select(SigningKey).where(SigningKey.kid == kid))
            if key is None:
                raise NotFound(f"no signing key {kid!r}")
            if key.retired_at is not None:
                raise NotFound(f"signing key {kid!r} is already retired")
            keys = await _read(db)
            is_current = keys.current is key
            if (is_current or keys.next is key) and plan is None:
                raise RotationConflict  # its role changed since we looked: try again
            if is_current or keys.next is key:
                # A successor made here must be usable by the running deployment.
                deployed = keys.current
                _check_same_secret(core, deployed)
                configured = core.settings.jwt_algorithm
                if (
                    deployed is not None
                    and uses_key_pairs(core)
                    and deployed.algorithm != configured
                ):
                    raise AlgorithmMismatch(deployed.algorithm, configured)
            key.retired_at = now
            key.sealed_private_key = None
            audit.record(db, "signing_key_retired", client=client, now=now, kid=kid)
            new_kid = None
            if plan is not None and (is_current or keys.next is key):
                new_kid = plan.apply(core, db, keys, now, client, rotate=is_current)
    except IntegrityError:
        raise RotationConflict from None
    await _reload_here(core)
    return new_kid


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
    query = select(SigningKey).order_by(SigningKey.generation.desc())
    async with core.sessionmaker() as db:
        keys = list((await db.scalars(query)).all())
    statuses = []
    for key in keys:
        state: KeyState
        until: datetime | None = None
        if key.retired_at is not None:
            state, until = "retired", key.retired_at
        elif key.activated_at is None:
            state = "next"
        elif key.rotated_at is None:
            state = "current"
        else:
            until = key.rotated_at + window
            state = "retiring" if now < until else "expired"
        statuses.append(KeyStatus(key.kid, key.algorithm, key.created_at, state, until))
    return statuses


async def _ensure_current(core: Core) -> None:
    """At start-up under a key-pair algorithm: a current key of that algorithm that opens
    with the configured secret, and a published next key; made when missing. Reseals keys
    sealed under a fallback secret. Of processes starting at once, one makes the keys."""
    algorithm = core.settings.jwt_algorithm
    async with core.sessionmaker.begin() as db:
        keys = await _read(db)
        for key in (keys.current, keys.next):
            _reseal_if_stale(core, key)
        current_ok = _can_sign(core, keys.current, algorithm)
        next_ok = _can_sign(core, keys.next, algorithm)
    if current_ok and next_ok:
        return
    plan = await _Plan.make(core, algorithm, spare=not current_ok and not next_ok)
    try:
        async with core.sessionmaker.begin() as db:
            keys = await _read(db)
            if _can_sign(core, keys.current, algorithm) and _can_sign(core, keys.next, algorithm):
                return  # another process did it meanwhile
            rotate = not _can_sign(core, keys.current, algorithm)
            if rotate:
                level = logging.INFO if keys.current is None else logging.WARNING
                log.log(level, "new token signing key: %s", _why_new(core, keys.current))
            plan.apply(
                core, db, keys, core.clock(), ClientInfo(user_agent="authdb-startup"), rotate=rotate
            )
    except (IntegrityError, RotationConflict):
        pass  # another process made them at the same moment: use those


def _why_new(core: Core, current: SigningKey | None) -> str:
    if current is None:
        return f"there is none yet ({core.settings.jwt_algorithm})"
    if current.algorithm != core.settings.jwt_algorithm:
        return (
            f"AUTHDB_JWT_ALGORITHM changed from {current.algorithm} to "
            f"{core.settings.jwt_algorithm}"
        )
    return (
        f"the private key of {current.kid} was sealed under a secret key that is no longer "
        "configured (list the old one in AUTHDB_SECRET_KEY_FALLBACKS to keep it)"
    )


def _reseal_if_stale(core: Core, key: SigningKey | None) -> None:
    """Seal again under the current secret a key that only a fallback secret opens."""
    if key is None or key.sealed_private_key is None:
        return
    try:
        plaintext, stale = _sealer(core).open(key.sealed_private_key, _context(key.kid))
    except Unsealable:
        return
    if stale:
        key.sealed_private_key = _sealer(core).seal(plaintext, _context(key.kid))


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
    current = next((key for key in keys if key.activated_at is not None), None)
    if current is None or current.rotated_at is not None:
        raise Unsealable("no current signing key in the database")
    verifying = {
        key.kid: VerificationKey(key.algorithm, signing.load_public(key.public_jwk)) for key in keys
    }
    signer = _signer(core, current, known, verifying)
    return KeySet(
        signing_algorithm=signer[1] if signer else current.algorithm,
        signing_key=signer[2] if signer else None,
        signing_kid=signer[0] if signer else None,
        verifying=verifying,
        jwks=tuple(key.public_jwk for key in keys),
    )


def _signer(
    core: Core,
    current: SigningKey,
    known: tuple[str, Any] | None,
    verifying: dict[str, VerificationKey],
) -> tuple[str, str, Any] | None:
    """``(kid, algorithm, private key)`` to sign with: the current key; if it does not open
    with this process's secret (a deployment whose processes disagree on it), the key this
    process signed with so far while that one is still valid, else none (signing then
    answers 503). The public keys are loaded either way, so a retired key stops here too."""
    if known is not None and known[0] == current.kid:
        return current.kid, current.algorithm, known[1]
    try:
        return current.kid, current.algorithm, signing.load_private(_open_private(core, current))
    except Unsealable:
        log.error(
            "the current token signing key %s does not open with this AUTHDB_SECRET_KEY: "
            "every process of a deployment needs the same secret key",
            current.kid,
        )
    if known is not None and known[0] in verifying:
        return known[0], verifying[known[0]].algorithm, known[1]
    return None


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
        keys = await _load(core, known)
        if known is not None and keys.signing_kid != known[0]:
            log.info("token signing key is now %s (%s)", keys.signing_kid, keys.signing_algorithm)
        self._install(keys)

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
        current = self._core.codec
        # The same keys verify the same tokens: what the codec has verified stays verified.
        same = current is not None and current.keys.verifies_as(keys)
        self._core.codec = JWTCodec(
            verified=current.verified if current is not None and same else {},
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
