"""Users: lookups, creation and password changes shared by accounts, admin and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import MAX_ID, EmailToken, User
from authdb.errors import Conflict, InvalidInput, NotFound
from authdb.names import (
    control_character,
    email_key,
    login_key,
    normalize_username,
    username_key,
    username_problem,
)
from authdb.passwords import password_problem

if TYPE_CHECKING:
    from authdb.services.core import PasswordValidator


async def find_by_login(db: AsyncSession, login: str) -> User | None:
    """The user whose username or email matches ``login``, case-insensitively."""
    key = login_key(login)
    query = select(User).where(or_(User.username_key == key, User.email_key == key)).limit(2)
    users = list((await db.scalars(query)).all())
    # A username that equals another user's email is possible; the username wins.
    return next((u for u in users if u.username_key == key), users[0] if users else None)


async def get_user(db: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    """The user with this id (locked until commit with ``lock``), or NotFound."""
    # An id past the column's range names nobody (and would overflow PostgreSQL's query).
    user = await db.get(User, user_id, with_for_update=lock) if 0 < user_id <= MAX_ID else None
    if user is None:
        raise NotFound("User not found")
    return user


FULL_NAME_MAX = 256


def clean_username(raw: str) -> str:
    """NFKC-normalize a username and check its form, or raise InvalidInput."""
    username = normalize_username(raw)
    problem = username_problem(username)
    if problem:
        raise InvalidInput(problem, field="username")
    return username


def clean_full_name(raw: str | None) -> str | None:
    """A full name as given, if it fits its column and holds no control character."""
    if raw is None:
        return None
    if control_character(raw) is not None:
        # NUL breaks PostgreSQL; escapes and line breaks would forge output in terminals and logs.
        raise InvalidInput("Full name must not contain control characters", field="full_name")
    if len(raw) > FULL_NAME_MAX:
        raise InvalidInput(
            f"Full name must be at most {FULL_NAME_MAX} characters long", field="full_name"
        )
    return raw


def check_password(
    password: str,
    *,
    username: str | None,
    email: str | None,
    validators: Sequence[PasswordValidator],
    field: str = "password",
) -> None:
    """Apply the password policy, authdb's rules then the application's ``validators``
    (``core.password_validators``: required, so that no path forgets them).

    Raises InvalidInput naming ``field`` with the broken rule's sentence.
    """
    problem = password_problem(password, username=username, email=email, validators=validators)
    if problem:
        raise InvalidInput(problem, field=field)


def set_identity(user: User, *, username: str | None = None, email: str | None = None) -> None:
    """Change username and/or email, keeping their case-folded keys in step."""
    if username is not None:
        user.username = username
        user.username_key = username_key(username)
    if email is not None:
        user.email = email
        user.email_key = email_key(email)


async def flush_unique(db: AsyncSession, user: User) -> None:
    """Flush ``user``, turning a taken username or email into the spec's 409 detail.

    The database's unique constraints decide, so racing requests cannot both win. A look
    beforehand only makes the detail deterministic (username first) when both are taken.
    After a failed flush the transaction is unusable, so the violated constraint is named
    from the error: SQLite says "users.email_key", PostgreSQL "uq_users_email_key".
    """
    taken = select(User.id).where(User.username_key == user.username_key)
    if user.id is not None:
        taken = taken.where(User.id != user.id)
    with db.no_autoflush:
        if (await db.scalar(taken.limit(1))) is not None:
            raise Conflict("Username already registered")
    try:
        await db.flush()
    except IntegrityError as exc:
        message = str(exc.orig)
        if "email_key" in message:
            raise Conflict("Email already registered") from None
        if "username_key" in message:
            raise Conflict("Username already registered") from None
        raise


async def set_password_hash(db: AsyncSession, user: User, hashed: str, now: datetime) -> None:
    """Store a new hash; outstanding reset tokens and a pending email change die with the old
    password (whoever asked for the change may have known the old one). Callers then end the
    sessions with ``sessions.revoke_all``, which ends pending MFA sign-ins too."""
    user.hashed_password = hashed
    user.password_changed_at = now
    await db.execute(
        delete(EmailToken).where(EmailToken.user_id == user.id, EmailToken.purpose == "reset")
    )
    await cancel_pending_email(db, user)


async def cancel_pending_email(db: AsyncSession, user: User) -> None:
    """Withdraw a requested email change: the pending address and every link mailed to it."""
    user.pending_email = None
    stale = EmailToken.email.is_(None) | (EmailToken.email != user.email)
    await db.execute(delete(EmailToken).where(EmailToken.user_id == user.id, stale))
