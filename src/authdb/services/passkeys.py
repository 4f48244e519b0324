"""Passkeys (WebAuthn discoverable credentials): registering, listing and removing them.

Signing in with one is ``authdb.services.passkey_login``; the protocol itself (options,
sealed challenges, verification) is ``authdb.relying_party``.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authdb import relying_party as rp_
from authdb.db.models import AuthSession, Passkey, User
from authdb.errors import (
    Conflict,
    InvalidInput,
    InvalidPasskeyRegistration,
    NotFound,
    PasswordRequired,
)
from authdb.names import has_control_characters
from authdb.ratelimit import RateLimits
from authdb.sealing import Sealer, derive_key
from authdb.services import audit, passkey_challenges
from authdb.services.core import ClientInfo, Core
from authdb.services.email_tokens import Mail
from authdb.services.guard import confirm_password
from authdb.services.sessions import Authenticated

# Enough for every device a person owns; a bound, so that a stolen session cannot pile rows up.
MAX_PASSKEYS = 20
MAX_NAME_CHARS = 64
DEFAULT_NAME = "Passkey"
TOO_MANY = "Too many passkeys"
ALREADY_REGISTERED = "Passkey already registered"
NOT_FOUND = "Passkey not found"
_HANDLE_PURPOSE = "authdb webauthn user handle"
# Adding a passkey without the password needs a sign-in at most this old (GitHub's "sudo
# mode" idea; ASVS 4.0 V3.7.1: re-authenticate before sensitive changes).
RECENT_SIGN_IN = timedelta(minutes=10)


def challenge_sealer(core: Core) -> Sealer:
    """The sealer of WebAuthn challenges, under the deployment secret."""
    return core.sealer(rp_.SEAL_PURPOSE)


def clean_name(name: str | None, default: str) -> str:
    """A passkey's display name: trimmed, 1..64 characters, no control characters.

    ``default`` (cut to size) when ``name`` is None. Raises InvalidInput (422).
    """
    if name is None:
        fallback = default.strip()[:MAX_NAME_CHARS]
        return fallback if fallback and not has_control_characters(fallback) else DEFAULT_NAME
    cleaned = name.strip()
    if not cleaned:
        raise InvalidInput("Name must not be empty", field="name")
    if len(cleaned) > MAX_NAME_CHARS:
        raise InvalidInput(f"Name is longer than {MAX_NAME_CHARS} characters", field="name")
    if has_control_characters(cleaned):
        raise InvalidInput("Name contains invalid characters", field="name")
    return cleaned


async def list_for(core: Core, user_id: int) -> list[Passkey]:
    """The user's passkeys, oldest first."""
    async with core.sessionmaker() as db:
        return await _passkeys(db, user_id)


async def _passkeys(db: AsyncSession, user_id: int) -> list[Passkey]:
    query = select(Passkey).where(Passkey.user_id == user_id).order_by(Passkey.id)
    return list((await db.scalars(query)).all())


async def _confirm_presence(
    core: Core,
    limits: RateLimits,
    auth: Authenticated,
    password: str | None,
    client: ClientInfo,
) -> None:
    if password is not None:
        await confirm_password(core, limits, auth.user, password, client)
        return
    async with core.sessionmaker() as db:
        session = await db.get(AuthSession, auth.session_id)
    if session is None or session.created_at < core.clock() - RECENT_SIGN_IN:
        raise PasswordRequired


def new_user_handle(core: Core, user_id: int) -> bytes:
    """The WebAuthn user handle of a user's first passkey: 32 bytes, HMAC-SHA256 of the id
    under a key derived from the secret key. Opaque, no personal data (WebAuthn Level 3,
    section 14.6.1), and the same for registrations begun at once; later passkeys reuse the
    stored one, so a new secret key changes nothing for an account that has passkeys."""
    if core.secret is None:
        raise RuntimeError("authdb is not started: use auth.lifespan or await auth.startup()")
    key = derive_key(core.secret, _HANDLE_PURPOSE)
    return hmac.new(key, str(user_id).encode(), hashlib.sha256).digest()


async def registration_options(
    core: Core,
    limits: RateLimits,
    auth: Authenticated,
    password: str | None,
    client: ClientInfo,
) -> dict[str, Any]:
    """PublicKeyCredentialCreationOptionsJSON for a new passkey of the caller, with a sealed
    5-minute challenge bound to the user; the user's passkeys are excluded (no duplicate on
    one authenticator).

    A passkey signs in without the password or the second factor, so adding one takes a
    recent sign-in (``RECENT_SIGN_IN``) or the password: a stolen access token alone must not
    buy lasting access. A wrong password counts as a failed login.

    Raises PasswordRequired (403), IncorrectPassword (400), TooManyRequests (429),
    PasskeysUnavailable (409), FeatureNotInstalled (501), Conflict (409) at ``MAX_PASSKEYS``.
    """
    rp = rp_.relying_party(core.settings)
    user = auth.user
    await _confirm_presence(core, limits, auth, password, client)
    existing = await list_for(core, user.id)
    if len(existing) >= MAX_PASSKEYS:
        raise Conflict(TOO_MANY)
    handle = existing[0].user_handle if existing else new_user_handle(core, user.id)
    challenge = rp_.Challenge(
        purpose=rp_.REGISTER,
        expires_at=core.clock() + rp_.CHALLENGE_LIFETIME,
        user_id=user.id,
        user_handle=handle,
    )
    return rp_.creation_options(
        rp,
        challenge=rp_.seal_challenge(challenge_sealer(core), challenge),
        user_handle=handle,
        username=user.username,
        display_name=user.full_name or user.username,
        exclude=[passkey.credential_id for passkey in existing],
    )


async def register(
    core: Core,
    user: User,
    credential: dict[str, Any],
    name: str | None,
    client: ClientInfo,
    *,
    default_name: str = DEFAULT_NAME,
) -> tuple[Passkey, Mail | None]:
    """Verify a RegistrationResponseJSON against a challenge issued to ``user`` and store the
    passkey. The challenge is spent by this call, whatever its outcome.

    Raises InvalidPasskeyRegistration (400) for a bad response or a foreign, expired or spent
    challenge; Conflict (409) for a credential already registered or ``MAX_PASSKEYS``;
    InvalidInput (422) for a bad name. Returns the passkey and the notice to mail the account.
    """
    rp = rp_.relying_party(core.settings)
    rp_.webauthn_library()  # 501 naming the extra, before the challenge is spent
    label = clean_name(name, default_name)
    raw = rp_.client_challenge(credential)
    challenge = None
    if raw is not None:
        challenge = rp_.open_challenge(challenge_sealer(core), raw, rp_.REGISTER, core.clock())
    if raw is None or challenge is None or challenge.user_id != user.id:
        raise InvalidPasskeyRegistration
    if not await passkey_challenges.spend(core, raw, challenge.expires_at):
        raise InvalidPasskeyRegistration
    verified = rp_.verify_registration(rp, credential, raw)
    assert challenge.user_handle is not None  # sealed with every registration challenge
    return await _store(core, user, verified, challenge.user_handle, label, client)


async def _store(
    core: Core,
    user: User,
    verified: rp_.NewCredential,
    handle: bytes,
    name: str,
    client: ClientInfo,
) -> tuple[Passkey, Mail | None]:
    now = core.clock()
    try:
        async with core.sessionmaker.begin() as db:
            owner = await db.get(User, user.id, with_for_update=True)
            if owner is None:
                raise NotFound("User not found")
            count = await db.scalar(
                select(func.count()).select_from(Passkey).where(Passkey.user_id == user.id)
            )
            if (count or 0) >= MAX_PASSKEYS:
                raise Conflict(TOO_MANY)
            passkey = _new_row(user.id, verified, handle, name, now)
            db.add(passkey)
            await db.flush()
            audit.record(
                db,
                "passkey_registered",
                client=client,
                now=now,
                user_id=user.id,
                passkey_id=passkey.id,
            )
    except IntegrityError:
        raise Conflict(ALREADY_REGISTERED) from None
    return passkey, _notice(owner, "passkey_added", name)


def _new_row(
    user_id: int, verified: rp_.NewCredential, handle: bytes, name: str, now: datetime
) -> Passkey:
    return Passkey(
        user_id=user_id,
        credential_id=verified.credential_id,
        user_handle=handle,
        public_key=verified.public_key,
        sign_count=verified.sign_count,
        name=name,
        aaguid=verified.aaguid,
        backup_eligible=verified.backup_eligible,
        backed_up=verified.backed_up,
        created_at=now,
    )


async def remove(
    core: Core,
    limits: RateLimits,
    user: User,
    passkey_id: int,
    password: str,
    client: ClientInfo,
) -> Mail | None:
    """Remove one of ``user``'s passkeys after checking the password.

    A wrong password counts as a failed login (IncorrectPassword, 400, or TooManyRequests).
    Raises NotFound (404) for an id that is not one of the user's passkeys. Returns the notice.
    """
    async with core.sessionmaker() as db:
        found = await db.get(Passkey, passkey_id)
    if found is None or found.user_id != user.id:
        raise NotFound(NOT_FOUND)
    await confirm_password(core, limits, user, password, client)
    async with core.sessionmaker.begin() as db:
        result = await db.execute(
            delete(Passkey).where(Passkey.id == passkey_id, Passkey.user_id == user.id)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(NOT_FOUND)  # removed meanwhile by another request
        audit.record(
            db,
            "passkey_deleted",
            client=client,
            now=core.clock(),
            user_id=user.id,
            passkey_id=passkey_id,
        )
    return _notice(user, "passkey_removed", found.name)


def _notice(user: User, template: str, name: str) -> Mail | None:
    if not user.email:
        return None
    context = {"username": user.username, "passkey_name": name}
    return Mail(to=user.email, template=template, context=context)
