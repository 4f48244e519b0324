"""Multi-factor authentication: RFC 6238 TOTP with single-use recovery codes.

A user sets up an authenticator (a pending secret, sealed at rest), confirms it with a first
code, and from then on a right password opens an ``mfa_token`` challenge instead of a
session (see ``authdb.services.login``). Every accepted TOTP code claims its time step, so a
code works once; every recovery code is stored as a keyed HMAC and is spent by one
conditional UPDATE.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authdb import totp
from authdb.db.models import MFAChallenge, Passkey, RecoveryCode, TOTPSecret, User
from authdb.errors import Conflict, InvalidMFACode, NotAuthenticated, NotFound, TooManyRequests
from authdb.ratelimit import RateLimits
from authdb.sealing import Sealer, Unsealable, derive_key
from authdb.services import audit, lockout
from authdb.services.core import ClientInfo, Core
from authdb.services.email_tokens import Mail
from authdb.services.guard import attempt, check_password, confirm_password, fail
from authdb.tokens import hash_opaque_token, new_opaque_token

# An mfa_token lives this long and dies at this many wrong codes (SPEC, "Multi-factor").
CHALLENGE_LIFETIME = timedelta(minutes=5)
CHALLENGE_MAX_FAILURES = 5
# A set-up not confirmed within this time must be started again (with the password).
SETUP_LIFETIME = timedelta(minutes=15)
RECOVERY_CODE_COUNT = 10
# Recovery codes: 12 characters of Crockford's base32 (60 bits), shown as xxxx-xxxx-xxxx.
_CODE_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_CODE_LENGTH = 12
_SEAL_PURPOSE = "authdb totp secret"
_CODE_PURPOSE = "authdb recovery code"

METHOD_TOTP = "totp"
METHOD_RECOVERY_CODE = "recovery_code"
METHOD_WEBAUTHN = "webauthn"
# What proved the first factor of a challenge (``MFAChallenge.first_factor``).
FIRST_FACTOR_PASSWORD = "password"
FIRST_FACTOR_PASSKEY = "passkey"

ALREADY_ENABLED = "MFA already enabled"
NOT_ENABLED = "MFA not enabled"
NO_SETUP = "No MFA setup in progress"


@dataclass(frozen=True, slots=True)
class TOTPSetup:
    """A pending authenticator: shown once, to be confirmed with a code."""

    secret: str  # base32, for typing into an app by hand
    otpauth_uri: str
    qr_svg: str  # an <svg> element of the URI as a QR code


async def methods(
    db: AsyncSession,
    user: User,
    first_factor: str = FIRST_FACTOR_PASSWORD,
    *,
    passkeys: bool = True,
) -> list[str]:
    """What completes a sign-in for ``user`` beyond the first factor: a TOTP or recovery code,
    and a passkey when the user has one, the first factor was not already a passkey and the
    app mounts passkeys (``passkeys``: ``Auth(features=...)``)."""
    if not user.mfa_enabled:
        return []
    found = [METHOD_TOTP, METHOD_RECOVERY_CODE]
    if first_factor == FIRST_FACTOR_PASSWORD and passkeys:
        passkey = await db.scalar(select(Passkey.id).where(Passkey.user_id == user.id).limit(1))
        if passkey is not None:
            found.append(METHOD_WEBAUTHN)
    return found


def _sealer(core: Core) -> Sealer:
    return core.sealer(_SEAL_PURPOSE)


def _context(user_id: int) -> str:
    return f"mfa_totp:{user_id}"


def _setup_for(core: Core, user: User, secret: str) -> TOTPSetup:
    uri = totp.provisioning_uri(secret, account=user.username, issuer=core.settings.mfa_issuer)
    return TOTPSetup(secret=secret, otpauth_uri=uri, qr_svg=totp.qr_svg(uri))


# --- enrolment -----------------------------------------------------------------------------------


async def begin_setup(
    core: Core, limits: RateLimits, user: User, password: str, client: ClientInfo
) -> TOTPSetup:
    """Start (or restart) TOTP set-up after checking the password: a new pending secret.

    Raises Conflict (409) when MFA is already on, IncorrectPassword (400) or TooManyRequests
    (a wrong password counts as a failed login, see ``confirm_password``).
    """
    if user.mfa_enabled:
        raise Conflict(ALREADY_ENABLED)
    await confirm_password(core, limits, user, password, client)
    secret = totp.new_secret()
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        row = await _lock_user(db, user.id)
        if row.mfa_enabled:
            raise Conflict(ALREADY_ENABLED)
        await db.execute(delete(TOTPSecret).where(TOTPSecret.user_id == user.id))
        sealed = _sealer(core).seal(secret.encode(), _context(user.id))
        db.add(TOTPSecret(user_id=user.id, sealed_secret=sealed, created_at=now))
        audit.record(db, "mfa_setup_started", client=client, now=now, user_id=user.id)
    return _setup_for(core, user, secret)


async def has_pending_setup(core: Core, user: User) -> bool:
    """Whether a set-up is waiting for its first code (and has not expired)."""
    async with core.sessionmaker() as db:
        row = await db.get(TOTPSecret, user.id)
    return _pending(row, core.clock())


def _pending(row: TOTPSecret | None, now: datetime) -> bool:
    # An abandoned set-up does not wait for ever: its secret protects nothing but was shown.
    return row is not None and row.confirmed_at is None and row.created_at > now - SETUP_LIFETIME


async def confirm_setup(
    core: Core, limits: RateLimits, user: User, code: str, client: ClientInfo
) -> tuple[list[str], Mail | None]:
    """Turn MFA on with a first code from the pending secret: 10 new recovery codes.

    A wrong code counts as a failed login (InvalidMFACode, 400, or TooManyRequests once the
    account locks): whoever holds a stolen access token must not try codes until one fits.
    Raises Conflict (409) without a set-up in progress (none, confirmed, or older than
    ``SETUP_LIFETIME``). Returns the codes (shown once) and the notice to mail the account.
    """
    async with attempt(core, limits, user, client) as key:
        try:
            return await _confirm(core, user, code, client)
        except InvalidMFACode as exc:
            await fail(core, limits, key, client, user.id, exc, "mfa_failed")


async def _confirm(
    core: Core, user: User, code: str, client: ClientInfo
) -> tuple[list[str], Mail | None]:
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        row = await _lock_user(db, user.id)
        pending = await db.get(TOTPSecret, user.id)
        if row.mfa_enabled or pending is None or not _pending(pending, now):
            raise Conflict(NO_SETUP)
        step = _matching_step(core, pending, code, now)
        if step is None:
            raise InvalidMFACode  # rolls back; counted by the caller
        pending.confirmed_at = now
        pending.last_used_step = step  # the confirming code cannot sign anyone in later
        row.mfa_enabled = True
        codes = await _replace_recovery_codes(core, db, user.id, now)
        audit.record(db, "mfa_enabled", client=client, now=now, user_id=user.id, method="totp")
        return codes, _notice(row, "mfa_enabled")


async def regenerate_recovery_codes(
    core: Core, limits: RateLimits, user: User, password: str, client: ClientInfo
) -> tuple[list[str], Mail | None]:
    """Ten new recovery codes after checking the password; the earlier ones stop working.

    The account is told by email: new codes in other hands would turn the second factor off.
    Raises Conflict (409) when MFA is off, IncorrectPassword (400) or TooManyRequests.
    Returns the codes (shown once) and the notice.
    """
    if not user.mfa_enabled:
        raise Conflict(NOT_ENABLED)
    await confirm_password(core, limits, user, password, client)
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        row = await _lock_user(db, user.id)
        if not row.mfa_enabled:
            raise Conflict(NOT_ENABLED)
        codes = await _replace_recovery_codes(core, db, user.id, now)
        audit.record(db, "mfa_recovery_codes_replaced", client=client, now=now, user_id=user.id)
        return codes, _notice(row, "mfa_recovery_codes")


async def disable(
    core: Core, limits: RateLimits, user: User, password: str, code: str, client: ClientInfo
) -> Mail | None:
    """Turn MFA off with the password and a current TOTP or recovery code.

    Both are checked within one guarded attempt; a wrong code counts as a failed login
    (InvalidMFACode, 400, or TooManyRequests once the account locks). Raises Conflict (409)
    when MFA is off, IncorrectPassword (400). Returns the notice to mail.
    """
    if not user.mfa_enabled:
        raise Conflict(NOT_ENABLED)
    async with attempt(core, limits, user, client) as key:
        await check_password(core, limits, key, user, password, client)
        try:
            return await _turn_off_with(core, user, code, key, client)
        except InvalidMFACode as exc:
            await fail(core, limits, key, client, user.id, exc, "mfa_failed")


async def _turn_off_with(
    core: Core, user: User, code: str, key: str, client: ClientInfo
) -> Mail | None:
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        row = await _lock_user(db, user.id)
        if not row.mfa_enabled:
            raise Conflict(NOT_ENABLED)
        method = await verify_factor(core, db, user.id, code=code, now=now)
        if method is None:
            raise InvalidMFACode  # rolls back; counted by the caller
        # A proven second factor ends the run of failures, as a completed sign-in does.
        retry = await lockout.admit_success(db, key, now)
        if retry is not None:
            raise TooManyRequests(retry)  # locked meanwhile: nothing changes
        await _turn_off(db, row.id)
        audit.record(db, "mfa_disabled", client=client, now=now, user_id=row.id, method=method)
        return _notice(row, "mfa_disabled")


async def reset(
    core: Core, user_id: int, client: ClientInfo, *, actor_id: int | None = None
) -> Mail | None:
    """An administrator turns a user's MFA off (a lost authenticator and lost codes).

    Raises NotFound (404). Does nothing but audit when MFA was already off; returns the
    notice to mail when it was on.
    """
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        row = await db.get(User, user_id, with_for_update=True)
        if row is None:
            raise NotFound("User not found")
        was_on = row.mfa_enabled
        await _turn_off(db, row.id)
        audit.record(
            db,
            "mfa_reset",
            client=client,
            now=now,
            user_id=row.id,
            actor_id=actor_id,
            was_on=was_on,
        )
        return _notice(row, "mfa_reset") if was_on else None


# --- the second factor at sign-in ----------------------------------------------------------------


async def start_challenge(
    db: AsyncSession, user_id: int, now: datetime, first_factor: str = FIRST_FACTOR_PASSWORD
) -> str:
    """A new ``mfa_token`` for a user whose first factor (``first_factor``: a password, or a
    passkey without user verification) was just accepted. Stored as a hash."""
    token = new_opaque_token()
    # This user's spent and expired challenges go now: a password holder cannot pile them up.
    dead = or_(MFAChallenge.expires_at <= now, MFAChallenge.used_at.is_not(None))
    await db.execute(delete(MFAChallenge).where(MFAChallenge.user_id == user_id, dead))
    db.add(
        MFAChallenge(
            user_id=user_id,
            token_hash=hash_opaque_token(token),
            created_at=now,
            expires_at=now + CHALLENGE_LIFETIME,
            failures=0,
            first_factor=first_factor,
        )
    )
    return token


def _open_challenge(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        MFAChallenge.used_at.is_(None),
        MFAChallenge.expires_at > now,
        MFAChallenge.failures < CHALLENGE_MAX_FAILURES,
    )


async def find_challenge(db: AsyncSession, token: str, now: datetime) -> MFAChallenge | None:
    """The open challenge ``token`` names: unused, unexpired, under the wrong-code limit."""
    query = select(MFAChallenge).where(
        MFAChallenge.token_hash == hash_opaque_token(token), *_open_challenge(now)
    )
    return (await db.scalars(query)).one_or_none()


async def reserve_attempt(db: AsyncSession, challenge_id: int, now: datetime) -> bool:
    """Take one of the challenge's attempts before a code is checked (one conditional UPDATE),
    so that concurrent guesses cannot exceed the limit; False when none is left."""
    result = await db.execute(
        update(MFAChallenge)
        .where(MFAChallenge.id == challenge_id, *_open_challenge(now))
        .values(failures=MFAChallenge.failures + 1)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def spend_challenge(db: AsyncSession, challenge_id: int, now: datetime) -> bool:
    """Use the challenge up after a right code, if no concurrent request did (one winner).

    Its attempt was reserved already, so the wrong-code limit is not checked again.
    """
    result = await db.execute(
        update(MFAChallenge)
        .where(
            MFAChallenge.id == challenge_id,
            MFAChallenge.used_at.is_(None),
            MFAChallenge.expires_at > now,
        )
        .values(used_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def verify_factor(
    core: Core,
    db: AsyncSession,
    user_id: int,
    *,
    now: datetime,
    otp: str | None = None,
    recovery_code: str | None = None,
    code: str | None = None,
) -> str | None:
    """Check and spend a second factor in the caller's transaction: the method, or None.

    ``otp`` is only ever a TOTP code and ``recovery_code`` only a recovery code; ``code`` (a
    form with one field for both) is told apart by shape: up to 6 digits is a TOTP code. A
    TOTP code claims its time step, so it, and any code of an earlier step, is refused
    afterwards (RFC 6238 section 5.2).
    """
    if code is not None:
        if _looks_like_totp(code):
            otp = code
        else:
            recovery_code = code
    if otp is not None:
        return METHOD_TOTP if await _spend_totp(core, db, user_id, otp, now) else None
    if recovery_code is not None and await _spend_recovery_code(
        core, db, user_id, recovery_code, now
    ):
        return METHOD_RECOVERY_CODE
    return None


def _looks_like_totp(code: str) -> bool:
    digits = totp.normalize(code)
    return digits.isascii() and digits.isdigit() and len(digits) <= totp.DIGITS


async def _spend_totp(core: Core, db: AsyncSession, user_id: int, code: str, now: datetime) -> bool:
    row = await db.get(TOTPSecret, user_id)
    if row is None or row.confirmed_at is None:
        return False
    step = _matching_step(core, row, code, now)
    if step is None:
        return False
    claimed = await db.execute(
        update(TOTPSecret)
        .where(
            TOTPSecret.user_id == user_id,
            or_(TOTPSecret.last_used_step.is_(None), TOTPSecret.last_used_step < step),
        )
        .values(last_used_step=step)
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def _matching_step(core: Core, row: TOTPSecret, code: str, now: datetime) -> int | None:
    """The step ``code`` belongs to under the row's secret; re-seals a secret that only a
    fallback key could open, so the fallback can be dropped once every user has signed in."""
    sealer = _sealer(core)
    try:
        secret, stale = sealer.open(row.sealed_secret, _context(row.user_id))
    except Unsealable:
        # The secret key changed without a fallback: no code can match. Logged by the caller's
        # audit trail as a failure; an administrator resets MFA.
        return None
    if stale:
        row.sealed_secret = sealer.seal(secret, _context(row.user_id))
    return totp.matching_step(secret.decode(), code, now)


async def _spend_recovery_code(
    core: Core, db: AsyncSession, user_id: int, code: str, now: datetime
) -> bool:
    # Stored under the current key or, after a secret-key rotation, a fallback one.
    hashes = [_hash_code(key, user_id, code) for key in _code_keys(core)]
    result = await db.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.code_hash.in_(hashes),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def prune_challenges(db: AsyncSession, now: datetime) -> int:
    """Delete challenges that can no longer be used; returns how many."""
    dead = or_(MFAChallenge.expires_at <= now, MFAChallenge.used_at.is_not(None))
    result = await db.execute(delete(MFAChallenge).where(dead))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- helpers ------------------------------------------------------------------------------------


def new_recovery_code() -> str:
    """``xxxx-xxxx-xxxx`` from Crockford's base32 alphabet: 60 bits of randomness."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, _CODE_LENGTH, 4))


def _code_keys(core: Core) -> list[bytes]:
    """HMAC keys for recovery codes: derived from the secret key, then from each fallback."""
    if core.secret is None:
        raise RuntimeError("authdb is not started: use auth.lifespan or await auth.startup()")
    return [derive_key(secret, _CODE_PURPOSE) for secret in (core.secret, *core.secret_fallbacks)]


def _hash_code(key: bytes, user_id: int, code: str) -> str:
    """HMAC-SHA256 of the code as typed leniently (any case, spaces or hyphens; Crockford's
    look-alikes read as digits), bound to the user. Keyed, so that a database dump alone
    cannot test guesses: 60 bits would not stand against every user's codes at once."""
    cleaned = "".join(code.split()).replace("-", "").lower()
    cleaned = cleaned.translate(str.maketrans("oil", "011"))
    message = f"{user_id}:{cleaned}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


async def _replace_recovery_codes(
    core: Core, db: AsyncSession, user_id: int, now: datetime
) -> list[str]:
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    key = _code_keys(core)[0]
    db.add_all(
        RecoveryCode(user_id=user_id, code_hash=_hash_code(key, user_id, code), created_at=now)
        for code in codes
    )
    return codes


async def _turn_off(db: AsyncSession, user_id: int) -> None:
    for table in (TOTPSecret, RecoveryCode, MFAChallenge):
        await db.execute(delete(table).where(table.user_id == user_id))
    await db.execute(update(User).where(User.id == user_id).values(mfa_enabled=False))


async def _lock_user(db: AsyncSession, user_id: int) -> User:
    """The user's row, locked for the transaction (PostgreSQL; SQLite writes serialize)."""
    row = await db.get(User, user_id, with_for_update=True, populate_existing=True)
    if row is None:
        raise NotAuthenticated
    return row


def _notice(user: User, template: str) -> Mail | None:
    if not user.email:
        return None
    return Mail(to=user.email, template=template, context={"username": user.username})
