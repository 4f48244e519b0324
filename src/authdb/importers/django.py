"""Django: ``python manage.py dumpdata auth.user`` (or a custom user model), a JSON array.

Each user is ``{"model": "auth.user", "pk": 1, "fields": {"username", "email", "password",
"first_name", "last_name", "is_superuser", "is_active", ...}}``; records of other models are
passed over. Django keeps no "email verified" flag, so ``is_verified`` is unknown. A password
of ``!`` and random text is Django's unusable password: that user gets none here either.
"""

from __future__ import annotations

from typing import Any

from authdb.importers import values
from authdb.importers.json_positions import array_with_lines
from authdb.importers.records import BadLine, Reading, SourceUser, UnreadableExport


def read(text: str) -> Reading:
    """The users among the dumped records; raises UnreadableExport if there is no JSON array
    or no record of a user model in it."""
    reading = Reading()
    for line, record in array_with_lines(text):
        fields = record.get("fields") if isinstance(record, dict) else None
        if not isinstance(fields, dict):
            reading.errors.append(
                BadLine(line, 'expected {"model": ..., "pk": ..., "fields": {...}}')
            )
        elif _is_user(record, fields):
            found = _user(line, record, fields)
            (reading.errors if isinstance(found, BadLine) else reading.users).append(found)  # type: ignore[arg-type]
    if not reading.users and not reading.errors:
        raise UnreadableExport(
            "no user records in this file (expected the output of manage.py dumpdata auth.user)"
        )
    return reading


def _is_user(record: dict[str, Any], fields: dict[str, Any]) -> bool:
    """auth.user, or a custom user model: one with a password and a username or email."""
    model = record.get("model")
    return model == "auth.user" or (
        "password" in fields and ("email" in fields or "username" in fields)
    )


def _user(line: int, record: dict[str, Any], fields: dict[str, Any]) -> SourceUser | BadLine:
    try:
        email = values.text("email", fields.get("email"))
        if email is None:
            return BadLine(line, "has no email address; authdb needs one (add it in Django first)")
        password = values.text("password", fields.get("password")) or "!"
        first = values.text("first_name", fields.get("first_name")) or ""
        last = values.text("last_name", fields.get("last_name")) or ""
        return SourceUser(
            line=line,
            email=email,
            username=values.text("username", fields.get("username")),
            full_name=f"{first} {last}".strip() or None,
            hashed_password=None if password.startswith("!") else password,
            is_superuser=values.boolean("is_superuser", fields.get("is_superuser"), default=False),
            disabled=not values.boolean("is_active", fields.get("is_active"), default=True),
            source_id=None if record.get("pk") is None else str(record["pk"]),
        )
    except values.FieldError as exc:
        return BadLine(line, str(exc))
