"""Bringing accounts in: creating users (CLI, import, tests) and setting passwords by name.

Every path validates with the same rules as registration and hashes with the configured hasher.
"""

from __future__ import annotations

from dataclasses import dataclass

from authdb.db.models import User
from authdb.errors import InvalidInput, NotFound
from authdb.names import EMAIL_KEY_MAX, control_character, email_key
from authdb.passwords import Hasher
from authdb.services import audit, sessions
from authdb.services.core import ClientInfo, Core
from authdb.services.users import (
    check_password,
    clean_full_name,
    clean_username,
    find_by_login,
    flush_unique,
    set_identity,
    set_password_hash,
)


@dataclass(frozen=True, slots=True)
class NewUser:
    """A validated user ready to insert: the password is already hashed."""

    username: str
    email: str
    hashed_password: str
    full_name: str | None = None
    is_superuser: bool = False
    is_verified: bool = False
    disabled: bool = False


def clean_email(raw: str) -> str:
    """Validate an address's syntax (no DNS), returning its normalized form.

    Its case-folded key must fit its column too: folding can lengthen text.
    """
    from email_validator import EmailNotValidError, validate_email

    if control_character(raw) is not None:
        raise InvalidInput("Email must not contain control characters", field="email")
    try:
        email = validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidInput(f"Invalid email: {exc}", field="email") from None
    if len(email_key(email)) > EMAIL_KEY_MAX:
        raise InvalidInput("Email is too long once case-folded", field="email")
    return email


async def prepare_user(
    hasher: Hasher,
    *,
    username: str,
    email: str,
    password: str | None = None,
    hashed_password: str | None = None,
    full_name: str | None = None,
    is_superuser: bool = False,
    is_verified: bool = False,
    disabled: bool = False,
) -> NewUser:
    """Check every rule and hash the password; raises InvalidInput naming the broken rule."""
    username = clean_username(username)
    email = clean_email(email)
    full_name = clean_full_name(full_name)
    if (password is None) == (hashed_password is None):
        raise InvalidInput("Give exactly one of password and hashed_password")
    if password is not None:
        check_password(password, username=username, email=email)
        hashed_password = await hasher.hash(password)
    elif hashed_password is None or not Hasher.is_supported_hash(hashed_password):
        raise InvalidInput("hashed_password must be an argon2 or bcrypt hash")
    return NewUser(username, email, hashed_password, full_name, is_superuser, is_verified, disabled)


def _row(new: NewUser, now: object) -> User:
    user = User(
        full_name=new.full_name,
        hashed_password=new.hashed_password,
        is_superuser=new.is_superuser,
        is_verified=new.is_verified,
        disabled=new.disabled,
        created_at=now,
        updated_at=now,
    )
    set_identity(user, username=new.username, email=new.email)
    return user


async def create_user(
    core: Core, *, client: ClientInfo, actor_id: int | None = None, **fields: object
) -> User:
    """Create one user (CLI ``createuser``); 409-style Conflict on a taken name or email."""
    new = await prepare_user(core.hasher, **fields)  # type: ignore[arg-type]
    return (await insert_users(core, [new], client=client, actor_id=actor_id))[0]


async def insert_users(
    core: Core, batch: list[NewUser], *, client: ClientInfo, actor_id: int | None = None
) -> list[User]:
    """Insert validated users in one transaction: all of them or none."""
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        users = []
        for new in batch:
            user = _row(new, now)
            db.add(user)
            await flush_unique(db, user)
            audit.record(
                db, "user_created", client=client, now=now, user_id=user.id, actor_id=actor_id
            )
            users.append(user)
    return users


async def set_password(core: Core, login: str, password: str, client: ClientInfo) -> None:
    """Set a password by username or email (CLI ``changepassword``); ends every session."""
    async with core.sessionmaker() as db:
        user = await find_by_login(db, login)
    if user is None:
        raise NotFound(f"no user {login!r}")
    check_password(password, username=user.username, email=user.email)
    hashed = await core.hasher.hash(password)
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        user = await db.merge(user)
        await set_password_hash(db, user, hashed, now)
        await sessions.revoke_all(db, user.id, now)
        audit.record(db, "password_changed", client=client, now=now, user_id=user.id)
