"""Bringing accounts in: creating users (CLI, import, tests) and setting passwords by name.

Every path validates with the same rules as registration and hashes with the configured hasher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from authdb.db.models import User
from authdb.errors import InvalidInput, NotFound
from authdb.names import EMAIL_KEY_MAX, control_character, email_key
from authdb.passwords import Hasher
from authdb.services import audit, sessions
from authdb.services.core import ClientInfo, Core, PasswordValidator
from authdb.services.profile import clean_profile
from authdb.services.users import (
    check_password,
    clean_full_name,
    clean_username,
    find_by_login,
    flush_unique,
    get_user,
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
    # The application's profile fields, already validated (authdb.services.profile).
    profile: dict[str, Any] | None = None


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
    validators: Sequence[PasswordValidator],
    username: str,
    email: str,
    password: str | None = None,
    hashed_password: str | None = None,
    full_name: str | None = None,
    is_superuser: bool = False,
    is_verified: bool = False,
    disabled: bool = False,
) -> NewUser:
    """Check every rule and hash the password; raises InvalidInput naming the broken rule.

    ``validators``: the application's password rules (``core.password_validators``).
    """
    username = clean_username(username)
    email = clean_email(email)
    full_name = clean_full_name(full_name)
    if (password is None) == (hashed_password is None):
        raise InvalidInput("Give exactly one of password and hashed_password")
    if password is not None:
        check_password(password, username=username, email=email, validators=validators)
        hashed_password = await hasher.hash(password)
    elif hashed_password is None:
        raise InvalidInput("Give exactly one of password and hashed_password")
    elif (problem := Hasher.stored_hash_problem(hashed_password)) is not None:
        raise InvalidInput(f"hashed_password {problem}", field="hashed_password")
    return NewUser(username, email, hashed_password, full_name, is_superuser, is_verified, disabled)


def new_user_row(new: NewUser, now: datetime) -> User:
    """The ``users`` row of a validated ``NewUser``, created and updated at ``now``."""
    user = User(
        full_name=new.full_name,
        hashed_password=new.hashed_password,
        is_superuser=new.is_superuser,
        is_verified=new.is_verified,
        disabled=new.disabled,
        profile=new.profile,
        created_at=now,
        updated_at=now,
    )
    set_identity(user, username=new.username, email=new.email)
    return user


async def create_user(
    core: Core,
    *,
    username: str,
    email: str,
    password: str | None = None,
    hashed_password: str | None = None,
    full_name: str | None = None,
    is_superuser: bool = False,
    is_verified: bool = False,
    disabled: bool = False,
    profile: Mapping[str, Any] | BaseModel | None = None,
    client: ClientInfo,
    actor_id: int | None = None,
) -> User:
    """Create one user: ``auth.users.create``, CLI ``createuser``, tests.

    The rules of registration apply (``prepare_user``), and ``profile`` is validated by the
    application's profile model. Raises InvalidInput naming the field, Conflict (409) on a
    taken username or email. Audited as ``user_created`` (the ``user_registered`` event).
    """
    cleaned = clean_profile(core, profile)
    new = await prepare_user(
        core.hasher,
        validators=core.password_validators,
        username=username,
        email=email,
        password=password,
        hashed_password=hashed_password,
        full_name=full_name,
        is_superuser=is_superuser,
        is_verified=is_verified,
        disabled=disabled,
    )
    if cleaned is not None:
        new = replace(new, profile=cleaned)
    return (await insert_users(core, [new], client=client, actor_id=actor_id))[0]


async def insert_users(
    core: Core, batch: list[NewUser], *, client: ClientInfo, actor_id: int | None = None
) -> list[User]:
    """Insert validated users in one transaction: all of them or none."""
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        users = []
        for new in batch:
            user = new_user_row(new, now)
            db.add(user)
            await flush_unique(db, user)
            audit.record(
                db, "user_created", client=client, now=now, user_id=user.id, actor_id=actor_id
            )
            users.append(user)
    return users


async def set_password(core: Core, login: str, password: str, client: ClientInfo) -> None:
    """Set a password by username or email (CLI ``changepassword``); see ``set_user_password``.

    Raises NotFound naming ``login``.
    """
    async with core.sessionmaker() as db:
        user = await find_by_login(db, login)
    if user is None:
        raise NotFound(f"no user {login!r}")
    await set_user_password(core, user.id, password, client, known=user)


async def set_user_password(
    core: Core, user_id: int, password: str, client: ClientInfo, *, known: User | None = None
) -> None:
    """Set a user's password (``auth.users.set_password``, CLI ``changepassword``).

    Every session of theirs ends, and outstanding reset links and a pending email change die.
    Raises NotFound ("User not found"), InvalidInput (field ``password``) for a password the
    policy refuses. Audited as ``password_changed``.
    """
    if known is None:
        async with core.sessionmaker() as db:
            known = await get_user(db, user_id)
    check_password(
        password, username=known.username, email=known.email, validators=core.password_validators
    )
    # Hashed before the write transaction: argon2 is slow and SQLite's write lock is global.
    hashed = await core.hasher.hash(password)
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        user = await get_user(db, user_id)  # NotFound if deleted meanwhile
        await set_password_hash(db, user, hashed, now)
        await sessions.revoke_all(db, user.id, now)
        audit.record(db, "password_changed", client=client, now=now, user_id=user.id)
