"""The admin API: list, find, update and delete users, keeping one active superuser.

The HTTP admin routes and the ``authdb users`` commands call the same functions here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import MAX_ID, EmailToken, User
from authdb.errors import Conflict, InvalidInput, NotFound, StillReferenced
from authdb.names import email_key, fold, has_control_characters, login_key
from authdb.services import audit, lockout, sessions
from authdb.services.core import ClientInfo, Core
from authdb.services.profile import check_profile_change, merge_profile
from authdb.services.provisioning import clean_email
from authdb.services.users import (
    cancel_pending_email,
    check_password,
    clean_full_name,
    clean_username,
    find_by_login,
    flush_unique,
    set_identity,
    set_password_hash,
)

MAX_PAGE_SIZE = 100

LAST_SUPERUSER = "Cannot disable, demote or delete the last active superuser"
LAST_SUPERUSER_SELF = "Cannot remove the last active superuser"


@dataclass(frozen=True, slots=True)
class UserList:
    """One page of users and how many match in all."""

    items: list[User]
    total: int


class UserChanges(TypedDict, total=False):
    """What an administrator may change; absent keys stay as they are."""

    username: str
    email: str
    full_name: str | None
    password: str
    disabled: bool
    is_verified: bool
    is_superuser: bool
    # The application's profile fields to change, merged into the stored profile key by key.
    profile: Mapping[str, Any]


_FLAGS = ("disabled", "is_verified", "is_superuser")
_NOT_NULL = ("username", "email", "password", *_FLAGS)


async def list_users(
    core: Core, *, offset: int = 0, limit: int = 50, search: str | None = None
) -> UserList:
    """Users by id; ``search``: a case-insensitive substring of username, email or full name."""
    if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"offset must be >= 0 and limit 1 to {MAX_PAGE_SIZE}", field="limit")
    if search and has_control_characters(search):
        # PostgreSQL refuses NUL; no stored text holds any of them, so nothing could match.
        raise InvalidInput("search must not contain control characters", field="search")
    async with core.sessionmaker() as db:
        query = select(User)
        count = select(func.count()).select_from(User)
        if search and search.strip():
            matches = await _search_condition(db, search.strip())
            query, count = query.where(matches), count.where(matches)
        total = int(await db.scalar(count) or 0)
        # An offset past every row is just an empty page, not an overflow on PostgreSQL.
        page = query.order_by(User.id).offset(min(offset, MAX_ID)).limit(limit)
        items = list((await db.scalars(page)).all())
    return UserList(items, total)


async def _search_condition(db: AsyncSession, text: str) -> ColumnElement[bool]:
    """Substring match, case-insensitive for every script on both backends.

    Usernames and emails are compared through their stored case-folded keys. Full names have
    no such key: PostgreSQL's lower() knows Unicode, SQLite's only ASCII, so on SQLite a
    Python casefold function is registered on the connection instead.
    """
    key = login_key(text)
    conditions = [
        User.username_key.contains(key, autoescape=True),
        User.email_key.contains(key, autoescape=True),
    ]
    if await _register_fold(db):
        conditions.append(func.authdb_fold(User.full_name).contains(key, autoescape=True))
    else:
        conditions.append(User.full_name.icontains(text, autoescape=True))
    return or_(*conditions)


def _fold(value: str | None) -> str | None:
    return None if value is None else fold(value)


async def _register_fold(db: AsyncSession) -> bool:
    """Give a SQLite connection ``authdb_fold()``; False on other databases."""
    connection = await db.connection()
    if connection.dialect.name != "sqlite":
        return False
    raw = await connection.get_raw_connection()
    if not raw.info.get("authdb_fold"):  # once per pooled connection
        await raw.driver_connection.create_function(  # type: ignore[union-attr]
            "authdb_fold", 1, _fold, deterministic=True
        )
        raw.info["authdb_fold"] = True
    return True


async def get_user(core: Core, user_id: int) -> User:
    """One user by id, or NotFound."""
    async with core.sessionmaker() as db:
        return await _load(db, user_id)


async def find_user(core: Core, ref: str) -> User:
    """A user named on the command line: ``id:N``, a numeric id, a username or an email.

    Digits-only usernames are allowed, so ``42`` may name two different users; then nothing is
    guessed (a wrong guess could delete the wrong account) and the caller must say ``id:42``.
    """
    ref = ref.strip()
    explicit = ref.startswith("id:")
    digits = ref[3:] if explicit else ref
    # Not "²", which isdigit() accepts; and nothing past the id range, which names nobody.
    numeric = digits.isascii() and digits.isdigit() and len(digits) <= len(str(MAX_ID))
    if explicit and not numeric:
        raise InvalidInput(f"not a user id: {ref!r}")
    async with core.sessionmaker() as db:
        by_login = None if explicit else await find_by_login(db, ref)
        by_id = await _get(db, int(digits)) if numeric else None
    if by_login is not None and by_id is not None and by_login.id != by_id.id:
        raise Conflict(
            f"{ref!r} is both the id of user {by_id.username!r} and the username or email "
            f"of user id {by_login.id}: use id:{ref} or the email"
        )
    user = by_login or by_id
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


async def update_user(
    core: Core,
    user_id: int,
    changes: UserChanges,
    *,
    client: ClientInfo,
    actor_id: int | None = None,
) -> User:
    """Apply an administrator's changes and audit them.

    Disabling the user or setting their password ends all of their sessions; a changed email
    address becomes unverified unless ``is_verified`` is given too. ``profile`` is merged into
    the stored profile and validated whole (``authdb.services.profile.merge_profile``).
    """
    given = cast(Mapping[str, object], changes)
    nulls = [name for name in _NOT_NULL if name in given and given[name] is None]
    if nulls:
        raise InvalidInput(f"{nulls[0]} cannot be null")
    if "full_name" in changes:
        clean_full_name(changes["full_name"])
    username = clean_username(changes["username"]) if "username" in changes else None
    email = clean_email(changes["email"]) if "email" in changes else None
    if "profile" in changes:
        check_profile_change(core, changes["profile"])
    hashed = None
    if "password" in changes:
        # Hash before the write transaction: argon2 is slow and SQLite's write lock is global.
        current = await get_user(core, user_id)
        check_password(
            changes["password"],
            username=username or current.username,
            email=email or current.email,
            validators=core.password_validators,
        )
        hashed = await core.hasher.hash(changes["password"])
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        may_drop = changes.get("disabled") is True or changes.get("is_superuser") is False
        active = await lock_active_superusers(db) if may_drop else set()
        user = await _load(db, user_id, lock=True)
        old_email_key = user.email_key
        fields = _apply(user, changes, username=username, email=email)
        if "profile" in changes:
            merged = merge_profile(core, user.profile, changes["profile"])
            if merged != user.profile:
                user.profile = merged
                fields.append("profile")  # the name only: the values may be personal data
        if hashed is not None:
            fields.append("password")
        _keep_a_superuser(active, user, deleting=False)
        if not fields:
            return user
        user.updated_at = now
        # First, while nothing else is pending: any later statement would autoflush a taken
        # name as a bare IntegrityError instead of the 409.
        await flush_unique(db, user)
        if hashed is not None:
            await set_password_hash(db, user, hashed, now)
        if user.email_key != old_email_key:
            # Tokens mailed to the old address must not act on the account any more.
            await db.execute(delete(EmailToken).where(EmailToken.user_id == user.id))
        # Re-disabling revokes again: cheap, and sure to catch sessions made by other paths.
        if hashed is not None or changes.get("disabled") is True:
            await sessions.revoke_all(db, user.id, now)
        if changes.get("disabled") is True:
            await cancel_pending_email(db, user)  # a new password cancels one too
        flags = {name: getattr(user, name) for name in _FLAGS if name in fields}
        audit.record(
            db,
            "admin_user_updated",
            client=client,
            now=now,
            user_id=user.id,
            actor_id=actor_id,
            fields=fields,
            **flags,
        )
    return user


def _apply(
    user: User,
    changes: UserChanges,
    *,
    username: str | None,
    email: str | None,
) -> list[str]:
    """Set what differs; returns the names of the fields that changed (never a value)."""
    fields: list[str] = []
    given = cast(Mapping[str, object], changes)
    flags = {name: given[name] for name in _FLAGS if name in given}
    if username is not None and username != user.username:
        set_identity(user, username=username)
        fields.append("username")
    if email is not None and email != user.email:
        if email_key(email) != user.email_key:
            # A new address is unproven unless the administrator says otherwise.
            flags.setdefault("is_verified", False)
        set_identity(user, email=email)
        user.pending_email = None  # the administrator's word replaces a pending change
        fields.append("email")
    if "full_name" in changes and changes["full_name"] != user.full_name:
        user.full_name = changes["full_name"]
        fields.append("full_name")
    for name, value in flags.items():
        if value != getattr(user, name):
            setattr(user, name, value)
            fields.append(name)
    return fields


async def delete_user(
    core: Core, user_id: int, *, client: ClientInfo, actor_id: int | None = None
) -> None:
    """An administrator deletes a user (admin API, ``authdb users delete``, ``auth.users``).

    See ``remove_user`` for what goes and the errors: NotFound, Conflict (409).
    """
    await remove_user(
        core,
        user_id,
        event="admin_user_deleted",
        client=client,
        actor_id=actor_id,
        last_superuser=LAST_SUPERUSER,
        keep_name=True,
    )


# SQLSTATE foreign_key_violation (PostgreSQL); SQLite only says "FOREIGN KEY constraint failed".
_FK_VIOLATION = "23503"


async def remove_user(
    core: Core,
    user_id: int,
    *,
    event: str,
    client: ClientInfo,
    actor_id: int | None = None,
    last_superuser: str = LAST_SUPERUSER,
    keep_name: bool = False,
) -> None:
    """Delete a user: the one path of every deletion (self-service, admin, CLI, app code).

    Sessions, tokens, MFA and passkeys go with the row (ON DELETE CASCADE), and so do the
    application's rows whose foreign key to ``users.id`` declares it. Audited as ``event``.
    ``keep_name`` records the username in the event's detail (the account's own deletion
    leaves nothing of it). Raises NotFound ("User not found"); Conflict (409) with
    ``last_superuser`` for the last active superuser; Conflict naming the application's table
    when its rows still reference the user without ON DELETE CASCADE (nothing is deleted).
    """
    now = core.clock()
    try:
        async with core.sessionmaker.begin() as db:
            active = await lock_active_superusers(db)
            user = await _load(db, user_id, lock=True)
            if active == {user.id}:
                raise Conflict(last_superuser)
            # Recorded before the row goes, while the session still holds it: the callbacks
            # of ``user_deleted`` get the user as they were. The trail outlives the account,
            # so an administrator's deletion keeps the name it had.
            detail = {"username": user.username} if keep_name else {}
            audit.record(
                db, event, client=client, now=now, user_id=user.id, actor_id=actor_id, **detail
            )
            # The lockout row is keyed by user id, not a foreign key: no newcomer inherits it.
            await lockout.forgive(db, lockout.lock_key(user, ""))
            await db.delete(user)
            await db.flush()  # the foreign keys answer here (or, if deferred, at commit)
    except IntegrityError as exc:
        if not _is_foreign_key_violation(exc):
            raise
        raise StillReferenced(await _still_referenced_detail(core, user_id, exc)) from None


def _is_foreign_key_violation(exc: IntegrityError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code == _FK_VIOLATION or "FOREIGN KEY constraint failed" in str(exc.orig)


async def _still_referenced_detail(core: Core, user_id: int, exc: IntegrityError) -> str:
    """The 409 detail of a deletion the application's foreign keys refused, naming the
    tables: PostgreSQL names the table in its error; on SQLite we look for the rows."""
    tables = _tables_named_in(exc)
    if not tables:
        try:
            tables = await _sqlite_referencing_tables(core, user_id)
        except Exception:  # only a nicer message is lost
            tables = []
    where = (
        "rows in " + " and ".join(f"'{name}'" for name in tables)
        if tables
        else "rows of another table"
    )
    return (
        f"This user is still referenced by {where}; delete them first or declare ON DELETE CASCADE"
    )


def _tables_named_in(exc: IntegrityError) -> list[str]:
    # asyncpg's error (the cause of SQLAlchemy's adapted one) carries the referencing table.
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        name = getattr(error, "table_name", None)
        if isinstance(name, str) and name and name != "users":
            return [name]
    # 'update or delete on table "users" violates foreign key constraint "x" on table "todos"'
    found = re.findall(r'on table "([^"]+)"', str(exc.orig))
    return [found[-1]] if len(found) > 1 else []


# Foreign-key actions that let the user's row go.
_LETS_GO = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})


async def _sqlite_referencing_tables(core: Core, user_id: int) -> list[str]:
    """Tables holding rows that reference the user through a foreign key that neither
    cascades nor nulls: the rows that made SQLite refuse. Empty on other databases."""
    async with core.engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            return []
        names = (
            await conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        ).scalars()
        found = []
        for table in list(names):
            quoted = '"' + str(table).replace('"', '""') + '"'
            pragma = await conn.exec_driver_sql(f"PRAGMA foreign_key_list({quoted})")
            for key in pragma.mappings().all():
                target = str(key["table"]).strip('"').lower()
                if target != "users" or str(key["on_delete"]).upper() in _LETS_GO:
                    continue
                column = '"' + str(key["from"]).replace('"', '""') + '"'
                # Identifiers from the schema itself, quoted; the id is a bound parameter.
                probe = f"SELECT 1 FROM {quoted} WHERE {column} = ? LIMIT 1"  # noqa: S608
                hit = await conn.exec_driver_sql(probe, (user_id,))
                if hit.first() is not None and table not in found:
                    found.append(str(table))
        return found


async def _get(db: AsyncSession, user_id: int, *, lock: bool = False) -> User | None:
    if not 0 < user_id <= MAX_ID:
        return None
    return await db.get(User, user_id, with_for_update=lock)


async def _load(db: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    user = await _get(db, user_id, lock=lock)
    if user is None:
        raise NotFound("User not found")
    return user


async def lock_active_superusers(db: AsyncSession) -> set[int]:
    """Ids of the active superusers, locked until commit (PostgreSQL; SQLite writes serially).

    Without the lock, two administrators demoting each other at once could both see the other
    still in place and leave nobody in charge.
    """
    query = (
        select(User.id)
        .where(User.is_superuser.is_(True), User.disabled.is_(False))
        .order_by(User.id)
        .with_for_update()
    )
    return set((await db.scalars(query)).all())


def _keep_a_superuser(active: set[int], user: User, *, deleting: bool) -> None:
    """Refuse a change that would leave no active superuser (locked out of administration)."""
    if active != {user.id}:
        return
    if deleting or user.disabled or not user.is_superuser:
        raise Conflict(LAST_SUPERUSER)
