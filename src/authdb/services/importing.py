"""Importing users read from another system's export: check all, then hash, then write.

The order keeps the promise "a file with errors imports nothing, and says so at once":

1. ``plan`` checks every user against authdb's rules (username, email, full name, the
   password policy for plain passwords, the stored hash's format and cost), against the
   other users of the file and against the database's users, collecting every bad line;
   nothing slow happens yet.
2. ``hash_passwords`` hashes plain passwords (JSON Lines only) with argon2id on every core.
3. ``write`` inserts all users in one transaction, a chunk at a time: all of them or none.

Hashes brought in are stored as given (authdb.hashers verifies them) and replaced by argon2id
at each user's first right password.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import anyio
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from authdb.db.models import User
from authdb.errors import AuthError, Conflict, InvalidInput
from authdb.hash_threads import usable_cpus
from authdb.importers.records import BadLine, Note, Reading, Skipped, SourceUser
from authdb.names import (
    USERNAME_KEY_MAX,
    USERNAME_MAX,
    USERNAME_MIN,
    email_key,
    normalize_username,
    username_key,
    username_problem,
)
from authdb.passwords import UNUSABLE_PREFIX, Hasher, unusable_password
from authdb.services import audit
from authdb.services.core import ClientInfo, Core
from authdb.services.provisioning import NewUser, clean_email, new_user_row
from authdb.services.users import check_password, clean_full_name

# Users inserted per statement batch (and per progress step) while writing.
CHUNK = 1000
# How a bad line says that authdb already has the user (``skip_existing`` skips them instead).
ALREADY_REGISTERED = "is already registered in authdb"
# Keys looked up per query when checking for conflicts (well under SQLite's variable limit).
_LOOKUP = 500


class Progress(Protocol):
    """Where an import reports how far it is: a terminal's progress bar, or nothing."""

    def stage(self, description: str, total: int) -> None:
        """A new stage of ``total`` steps begins."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps of the current stage are done."""


class NoProgress:
    """Reports nothing (not on a terminal, or in tests)."""

    def stage(self, description: str, total: int) -> None:
        return None

    def advance(self, steps: int = 1) -> None:
        return None


@dataclass(slots=True)
class PlannedUser:
    """A user that passed every check; ``hashed_password`` is None until ``hash_passwords``
    hashes the plain ``password``."""

    source: SourceUser
    username: str
    email: str
    full_name: str | None
    hashed_password: str | None
    is_verified: bool
    # The source's username when authdb's rules refuse it, so another was made.
    renamed_from: str | None = None
    user_id: int | None = None
    # What the operator should know about this user (a full name left out).
    note: str | None = None

    @property
    def keeps_username(self) -> bool:
        """True when the username is the source's own, kept; False when one is made (the
        source has none, or authdb refuses its)."""
        return self.source.username is not None and self.renamed_from is None


@dataclass(slots=True)
class ImportPlan:
    """What an import will write, and every reason it cannot."""

    users: list[PlannedUser] = field(default_factory=list)
    errors: list[BadLine] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


class ImportRefused(AuthError):
    """The export has bad lines (``errors``, in line order): nothing was imported."""

    def __init__(self, errors: Sequence[BadLine]) -> None:
        self.errors = sorted(errors, key=lambda e: e.line)
        first = self.errors[0]
        super().__init__(f"line {first.line}: {first.message}")


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """``mark_verified``: every imported address counts as verified (the source system
    verified them), whatever the export says. ``skip_existing``: users whose username or
    email authdb already has are skipped (reported), not errors. ``strict``: authdb's own
    format, where a username or full name authdb refuses is a bad line; from another system, a
    refused username is replaced by one made from it and a refused full name is left out,
    each with a note (one user's display name must not stop everyone's move). ``source``:
    the format's name, kept in each ``user_created`` audit event.
    ``hash_field``: what the export calls the hash, for error messages."""

    mark_verified: bool = False
    skip_existing: bool = False
    strict: bool = False
    source: str = "jsonl"
    hash_field: str = "hashed_password"


async def import_users(
    core: Core,
    reading: Reading,
    options: ImportOptions,
    *,
    client: ClientInfo,
    progress: Progress | None = None,
) -> ImportPlan:
    """Check, hash and write ``reading``'s users; returns the plan, ids filled in.

    Raises ImportRefused naming every bad line (nothing written), Conflict if a user with
    one of the names registered while the import ran (nothing written either).
    """
    progress = progress or NoProgress()
    result = await plan(core, reading, options, progress=progress)
    if result.errors:
        raise ImportRefused(result.errors)
    await hash_passwords(core.hasher, result.users, progress)
    await write(core, result.users, options.source, client=client, progress=progress)
    return result


# --- 1. checking ----------------------------------------------------------------------------


async def plan(
    core: Core, reading: Reading, options: ImportOptions, *, progress: Progress
) -> ImportPlan:
    """Every user checked; the bad ones named in ``errors`` (the reader's among them)."""
    result = ImportPlan(
        errors=list(reading.errors), skipped=list(reading.skipped), notes=list(reading.notes)
    )
    progress.stage("checking", len(reading.users))
    checked: list[PlannedUser] = []
    for source in reading.users:
        found = _check(core, source, options)
        (result.errors if isinstance(found, BadLine) else checked).append(found)  # type: ignore[arg-type]
        progress.advance()
    checked = _drop_duplicates(checked, result.errors)
    async with core.sessionmaker() as db:
        checked = await _drop_existing(db, checked, options, result)
        await _name_unnamed(db, checked)
    result.users = checked
    return result


def _check(core: Core, source: SourceUser, options: ImportOptions) -> PlannedUser | BadLine:
    try:
        email = clean_email(source.email)
        username, renamed_from = _username(source, options)
        full_name, name_note = _full_name(source, options)
        hashed = _stored_hash(source, options.hash_field)
        if source.password is not None:
            check_password(
                source.password,
                username=username or None,
                email=email,
                validators=core.password_validators,
            )
    except AuthError as exc:
        return BadLine(source.line, exc.detail)
    verified = options.mark_verified or bool(source.is_verified)
    return PlannedUser(
        source, username, email, full_name, hashed, verified, renamed_from, note=name_note
    )


def _full_name(source: SourceUser, options: ImportOptions) -> tuple[str | None, str | None]:
    """The full name to store, and a note when another system's one had to be left out."""
    try:
        return clean_full_name(source.full_name), None
    except InvalidInput as exc:
        if options.strict:
            raise
        return None, f"full name not imported: {exc.detail}"


def _username(source: SourceUser, options: ImportOptions) -> tuple[str, str | None]:
    """The username to keep ("" for one made from the email later) and the source's name if
    it had to be replaced."""
    if source.username is None:
        return "", None
    name = normalize_username(source.username)
    problem = username_problem(name)
    if problem is None:
        return name, None
    if options.strict:
        raise InvalidInput(problem)
    return derived_username(name), source.username


def _stored_hash(source: SourceUser, field: str) -> str | None:
    """The hash to store as given, a fresh unusable one, or None (a plain password, hashed
    later)."""
    if source.password is not None:
        if source.hashed_password is not None:
            raise InvalidInput("give exactly one of password and hashed_password")
        return None
    hashed = source.hashed_password
    if hashed is None or hashed.startswith(UNUSABLE_PREFIX):
        return unusable_password()  # no password there: none that works here either
    problem = Hasher.stored_hash_problem(hashed)
    if problem is not None:
        raise InvalidInput(f"{field} {problem}")
    return hashed


def _drop_duplicates(users: list[PlannedUser], errors: list[BadLine]) -> list[PlannedUser]:
    """Users whose username or email an earlier line of the file already has become errors.

    Usernames made from a refused one or from the email are left out: ``_name_unnamed`` makes
    them unique.
    """
    seen: dict[str, dict[str, int]] = {"username": {}, "email": {}}
    kept = []
    for user in users:
        keys = {"email": email_key(user.email)}
        if user.keeps_username:
            keys["username"] = username_key(user.username)
        clash = next((what for what, key in keys.items() if key in seen[what]), None)
        if clash is not None:
            line = seen[clash][keys[clash]]
            errors.append(
                BadLine(user.source.line, f"{clash} {keys[clash]!r} is also on line {line}")
            )
            continue
        for what, key in keys.items():
            seen[what][key] = user.source.line
        kept.append(user)
    return kept


async def _drop_existing(
    db: AsyncSession, users: list[PlannedUser], options: ImportOptions, result: ImportPlan
) -> list[PlannedUser]:
    """Users whose username or email authdb already has: errors, or skipped with
    ``skip_existing``. Made-up usernames are not looked at here (see ``_name_unnamed``)."""
    kept_names = {username_key(u.username) for u in users if u.keeps_username}
    taken_names = await _taken(db, User.username_key, kept_names)
    taken_emails = await _taken(db, User.email_key, {email_key(u.email) for u in users})
    kept = []
    for user in users:
        why = None
        if email_key(user.email) in taken_emails:
            why = f"email {user.email!r} {ALREADY_REGISTERED}"
        elif user.keeps_username and username_key(user.username) in taken_names:
            why = f"username {user.username!r} {ALREADY_REGISTERED}"
        if why is None:
            kept.append(user)
        elif options.skip_existing:
            result.skipped.append(Skipped(user.source.line, why))
        else:
            result.errors.append(BadLine(user.source.line, why))
    return kept


async def _taken(
    db: AsyncSession, column: InstrumentedAttribute[str | None], keys: Iterable[str]
) -> set[str]:
    """Which of ``keys`` the ``users`` table holds in ``column`` (a key column)."""
    wanted = sorted(set(keys))
    found: set[str] = set()
    for start in range(0, len(wanted), _LOOKUP):
        chunk = wanted[start : start + _LOOKUP]
        found.update(await db.scalars(select(column).where(column.in_(chunk))))
    return found


async def _name_unnamed(db: AsyncSession, users: list[PlannedUser]) -> None:
    """Give users without a kept username one made from the refused name or the email,
    unique in the file and in the database ("alice", then "alice-2", "alice-3" ...).

    Users sharing a base name are numbered together: each round looks up a window of numbered
    names for every base at once, so the work grows with the number of users, not its square.
    """
    used = {username_key(u.username) for u in users if u.keeps_username}
    groups: dict[str, list[PlannedUser]] = {}
    for user in users:
        if not user.keeps_username:
            email = user.email
            user.username = user.username or derived_username(email.split("@", 1)[0], email)
            groups.setdefault(username_key(user.username), []).append(user)
    tried = dict.fromkeys(groups, 0)
    while groups:
        windows = {}
        for key, members in groups.items():
            size = len(members) + _SPARE
            windows[key] = [_numbered(members[0].username, tried[key] + n) for n in range(1, size)]
            tried[key] += size - 1
        wanted = (username_key(name) for names in windows.values() for name in names)
        taken = await _taken(db, User.username_key, wanted) | used
        groups = {
            key: left
            for key, members in groups.items()
            if (left := _assign(members, windows[key], taken, used))
        }


# Numbered names looked up beyond a base's users, for names already taken.
_SPARE = 8


def _assign(
    members: list[PlannedUser], names: list[str], taken: set[str], used: set[str]
) -> list[PlannedUser]:
    """Give ``members`` the free ``names`` in order; returns those left without one."""
    free = iter([n for n in names if username_key(n) not in taken])
    left = []
    for member in members:
        name = next(free, None)
        if name is None:
            left.append(member)
            continue
        used.add(username_key(name))
        taken.add(username_key(name))
        member.username = name
    return left


def _numbered(base: str, attempt: int) -> str:
    """``base`` for the first attempt, then ``base-2``, ``base-3`` ..., within the limits."""
    if attempt == 1:
        return base
    suffix = f"-{attempt}"
    return _fit(base[: USERNAME_MAX - len(suffix)]) + suffix


def derived_username(raw: str, fallback: str = "") -> str:
    """A username authdb accepts, made from ``raw`` (a refused username or an email's local
    part): every character outside letters, digits, ``.``, ``_`` and ``-`` becomes ``_``;
    too short, it is made from ``fallback`` (the whole email) or padded with ``_user``."""
    name = _fit("".join(_allowed(c) for c in normalize_username(raw)))
    if len(name) < USERNAME_MIN and fallback:
        return derived_username(fallback)
    if len(name) < USERNAME_MIN:
        name = _fit(name + "_user")
    return name if username_problem(name) is None else "user"


def _allowed(char: str) -> str:
    if char in "._-" or (unicodedata.category(char)[0] in "LN" and char.isprintable()):
        return char
    return "_"


def _fit(name: str) -> str:
    """``name`` cut to the length limits of a username and of its key."""
    name = name[:USERNAME_MAX]
    while name and len(username_key(name)) > USERNAME_KEY_MAX:
        name = name[:-1]
    return name


# --- 2. hashing -----------------------------------------------------------------------------


async def hash_passwords(hasher: Hasher, users: list[PlannedUser], progress: Progress) -> None:
    """Hash the plain passwords (argon2id) on every core this process may use."""
    plain = [u for u in users if u.hashed_password is None and u.source.password is not None]
    if not plain:
        return
    progress.stage("hashing passwords", len(plain))
    workers = usable_cpus()
    passwords = [u.source.password or "" for u in plain]
    hashes = await anyio.to_thread.run_sync(_hash_all, hasher, passwords, workers, progress.advance)
    for user, hashed in zip(plain, hashes, strict=True):
        user.hashed_password = hashed


def _hash_all(
    hasher: Hasher, passwords: list[str], workers: int, done: Callable[[int], None]
) -> list[str]:
    return hasher.hash_many(passwords, workers=workers, done=lambda: done(1))


# --- 3. writing -----------------------------------------------------------------------------


async def write(
    core: Core, users: list[PlannedUser], source: str, *, client: ClientInfo, progress: Progress
) -> None:
    """Insert ``users`` in one transaction, ``CHUNK`` at a time; each one's id is filled in.

    Each is audited as ``user_created`` with ``detail.imported_from``. Raises Conflict if a
    username or email was registered meanwhile (nothing is written).
    """
    progress.stage("writing", len(users))
    now = core.clock()
    try:
        async with core.sessionmaker.begin() as db:
            for start in range(0, len(users), CHUNK):
                chunk = users[start : start + CHUNK]
                await _insert_chunk(db, chunk, now)
                for user in chunk:
                    extra = {"is_superuser": True} if user.source.is_superuser else {}
                    audit.record(
                        db, "user_created", client=client, now=now, user_id=user.user_id,
                        imported_from=source, **extra,
                    )  # fmt: skip
                progress.advance(len(chunk))
    except IntegrityError:
        raise Conflict(
            "a user with one of these usernames or emails registered while the import ran; "
            "nothing was imported: run it again"
        ) from None


# The columns an imported row sets; the others take their defaults.
_COLUMNS = (
    "username", "username_key", "email", "email_key", "full_name", "hashed_password",
    "is_superuser", "is_verified", "disabled", "created_at", "updated_at",
)  # fmt: skip


async def _insert_chunk(db: AsyncSession, chunk: list[PlannedUser], now: datetime) -> None:
    """Insert the chunk's rows and fill in their ids, in as few statements as the database
    allows: PostgreSQL returns the ids of a batched insert in order; SQLite cannot, so the
    unit of work would insert row by row there, and one executemany and one indexed query for
    the ids are used instead."""
    rows = [new_user_row(_new_user(user), now) for user in chunk]
    values = [{c: getattr(row, c) for c in _COLUMNS} for row in rows]
    if db.get_bind().dialect.name == "postgresql":
        returning = insert(User).returning(User.username_key, User.id, sort_by_parameter_order=True)
        found = await db.execute(returning, values)
    else:
        await db.execute(insert(User), values)
        keys = [row.username_key for row in rows]
        found = await db.execute(
            select(User.username_key, User.id).where(User.username_key.in_(keys))
        )
    ids: dict[str | None, int] = {key: user_id for key, user_id in found}
    for user, row in zip(chunk, rows, strict=True):
        user.user_id = ids[row.username_key]


def _new_user(user: PlannedUser) -> NewUser:
    if user.hashed_password is None:
        raise RuntimeError("import: a password was not hashed")  # hash_passwords runs first
    source = user.source
    return NewUser(
        username=user.username,
        email=user.email,
        hashed_password=user.hashed_password,
        full_name=user.full_name,
        is_superuser=source.is_superuser,
        is_verified=user.is_verified,
        disabled=source.disabled,
    )
