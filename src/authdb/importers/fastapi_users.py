"""fastapi-users: its ``user`` table as CSV with a header, as JSON Lines, or as a JSON array.

Columns: ``id``, ``email``, ``hashed_password`` (pwdlib's argon2id since fastapi-users 13,
passlib's bcrypt before), ``is_active``, ``is_superuser``, ``is_verified``; other columns (an
app's own fields) are passed over. fastapi-users has no usernames: one is made from the email.
"""

from __future__ import annotations

from typing import Any

from authdb.importers import values
from authdb.importers.csv_rows import rows_with_lines
from authdb.importers.json_positions import array_with_lines, json_lines
from authdb.importers.records import BadLine, Reading, SourceUser

COLUMNS = ("email", "hashed_password", "is_active", "is_superuser", "is_verified")


def read(text: str) -> Reading:
    """A JSON array (``sqlite3 -json``) if the text opens with ``[``, JSON Lines if with
    ``{``, else CSV."""
    start = text.lstrip()[:1]
    if start == "[":
        reading = Reading()
        for line, record in array_with_lines(text):
            if isinstance(record, dict):
                reading.add(_user(line, record))
            else:
                reading.errors.append(BadLine(line, "expected a JSON object"))
        return reading
    if start == "{":
        return _read_jsonl(text)
    rows, errors = rows_with_lines(text, COLUMNS)
    reading = Reading(errors=errors)
    for line, row in rows:
        reading.add(_user(line, row))
    return reading


def _read_jsonl(text: str) -> Reading:
    reading = Reading()
    for line, record in json_lines(text):
        reading.add(record if isinstance(record, BadLine) else _user(line, record))
    return reading


def _user(line: int, row: dict[str, Any]) -> SourceUser | BadLine:
    try:
        email = values.required_text("email", row.get("email"))
        hashed = values.required_text("hashed_password", row.get("hashed_password"))
        source_id = row.get("id")
        return SourceUser(
            line=line,
            email=email,
            hashed_password=hashed,
            # NOT NULL columns in fastapi-users: an empty one is a mistake, not a default.
            is_superuser=values.boolean("is_superuser", row.get("is_superuser")),
            is_verified=values.boolean("is_verified", row.get("is_verified")),
            disabled=not values.boolean("is_active", row.get("is_active")),
            source_id=None if source_id in (None, "") else str(source_id),
        )
    except values.FieldError as exc:
        return BadLine(line, str(exc))
