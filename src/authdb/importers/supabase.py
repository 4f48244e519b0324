"""Supabase: its ``auth.users`` table as CSV with a header (``\\copy ... csv header`` or the
dashboard's "Download CSV").

``email``, ``encrypted_password`` (GoTrue's bcrypt, ``$2a$10$``; empty for users who sign in
only through a provider or by magic link: they get no password that works here),
``email_confirmed_at`` (set: verified), ``banned_until`` (in the future: disabled),
``raw_user_meta_data`` (``full_name`` or ``name``), ``is_super_admin``. Soft-deleted
(``deleted_at``) and anonymous (``is_anonymous``) users are skipped. Supabase has no
usernames: one is made from the email.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from authdb.importers import values
from authdb.importers.csv_rows import rows_with_lines
from authdb.importers.json_positions import loads
from authdb.importers.records import BadLine, Reading, Skipped, SourceUser

COLUMNS = ("id", "email", "encrypted_password")


def read(text: str, *, now: datetime | None = None) -> Reading:
    """Every row's user; ``now`` (default: the current time) decides whether a ban holds."""
    rows, errors = rows_with_lines(text, COLUMNS)
    reading = Reading(errors=errors)
    moment = now or datetime.now(UTC)
    for line, row in rows:
        try:
            if row.get("deleted_at"):
                reading.skipped.append(Skipped(line, "deleted in Supabase"))
            elif values.boolean("is_anonymous", row.get("is_anonymous"), default=False):
                reading.skipped.append(Skipped(line, "an anonymous user"))
            else:
                reading.users.append(_user(line, row, moment))
        except values.FieldError as exc:
            reading.errors.append(BadLine(line, str(exc)))
    return reading


def _user(line: int, row: dict[str, str], now: datetime) -> SourceUser:
    email = values.text("email", row.get("email"))
    if email is None:
        raise values.FieldError(
            "email is empty (a phone-only user?); authdb needs one: leave such users out of "
            "the export (where email is not null)"
        )
    banned_until = values.timestamp("banned_until", row.get("banned_until"))
    return SourceUser(
        line=line,
        email=email,
        full_name=_full_name(row.get("raw_user_meta_data")),
        hashed_password=values.text("encrypted_password", row.get("encrypted_password")),
        is_superuser=values.boolean("is_super_admin", row.get("is_super_admin"), default=False),
        is_verified=values.timestamp("email_confirmed_at", row.get("email_confirmed_at"))
        is not None,
        disabled=banned_until is not None and banned_until > now,
        source_id=values.text("id", row.get("id")),
    )


def _full_name(metadata: str | None) -> str | None:
    """``full_name`` or ``name`` from the user's metadata JSON, if it holds a string.

    Users write their own metadata: unreadable metadata costs them the name, not the import.
    """
    try:
        parsed: Any = loads(metadata) if metadata else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    for key in ("full_name", "name"):
        if isinstance(parsed.get(key), str) and parsed[key].strip():
            return str(parsed[key]).strip()
    return None
