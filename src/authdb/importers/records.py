"""What a reader of another system's export gives: the users it found, line by line.

A reader never touches the database and never hashes: it maps one export's fields to a
``SourceUser`` and names the line of anything it cannot map (``BadLine``). Checking the
values against authdb's rules, conflicts and writing are ``authdb.services.importing``'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SourceUser:
    """One user as the source system had them.

    ``line``: where the record starts in the file, from 1. ``username`` None: the source has
    none (fastapi-users, Supabase), so one is made from the email. ``password`` (plain text,
    JSONL only) or ``hashed_password`` (any format of ``authdb.hashers``); both None: the user
    has no password there (signed in through another provider), and gets none that works.
    ``is_verified`` None: the source does not record it. ``source_id``: the user's id in the
    source system, for the id map.
    """

    line: int
    email: str
    username: str | None = None
    full_name: str | None = None
    password: str | None = None
    hashed_password: str | None = None
    is_superuser: bool = False
    is_verified: bool | None = None
    disabled: bool = False
    source_id: str | None = None


@dataclass(frozen=True, slots=True)
class BadLine:
    """A record that cannot be imported, and why (a sentence without secrets)."""

    line: int
    message: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record that is deliberately not imported (a soft-deleted or anonymous user, a service
    account): not an error, but reported."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something about an imported user the operator should know: what the source had that
    authdb does not carry over (a second factor, a pending password change)."""

    line: int
    text: str


@dataclass(slots=True)
class Reading:
    """Everything read from one export file."""

    users: list[SourceUser] = field(default_factory=list)
    errors: list[BadLine] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def add(self, found: SourceUser | BadLine) -> None:
        """Keep a record a reader mapped: a user, or the reason its line is bad."""
        if isinstance(found, BadLine):
            self.errors.append(found)
        else:
            self.users.append(found)


class UnreadableExport(Exception):
    """The file as a whole is not this format's export (wrong format, not JSON, no header):
    one message, no line to name. The message never quotes file content beyond a header."""


# A reader: the file's text in, everything it found out. Raises UnreadableExport.
Reader = Callable[[str], Reading]


def read_text(path: Path) -> str:
    """The file's text (UTF-8, a byte order mark dropped, CRLF as LF); raises UnreadableExport
    saying why not (the caller names the file)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableExport(f"cannot read it: {exc.strerror}") from None
    if data.startswith(b"SQLite format 3\x00"):
        raise UnreadableExport(
            "this is a SQLite database, not an export: export its users table to CSV first "
            "with sqlite3 -header -csv (see docs/migrating.md)"
        )
    try:
        return data.decode("utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise UnreadableExport(f"cannot read it: not UTF-8 text ({exc.reason})") from None
