"""Django: ``python manage.py dumpdata auth.user`` (or a custom user model), a JSON array.

Each user is ``{"model": "auth.user", "pk": 1, "fields": {"username", "email", "password",
"first_name", "last_name", "is_superuser", "is_active", ...}}``. Only records of the user
model are read (``auth.user``, or a custom user model named with ``--model``); records of
other models are passed over, however much they look like users. Django keeps no "email
verified" flag, so ``is_verified`` is unknown. A password of ``!`` and random text is Django's
unusable password: that user gets none here either.
"""

from __future__ import annotations

from typing import Any

from authdb.importers import values
from authdb.importers.json_positions import array_with_lines
from authdb.importers.records import BadLine, Reading, SourceUser, UnreadableExport
from authdb.importers.values import shown

DEFAULT_MODEL = "auth.user"


def read(text: str, *, model: str = DEFAULT_MODEL) -> Reading:
    """The records of ``model`` (``app_label.modelname``, any case) as users; raises
    UnreadableExport if there is no JSON array or no record of that model in it."""
    wanted = model.lower()
    reading = Reading()
    others: set[str] = set()
    for line, record in array_with_lines(text):
        fields = record.get("fields") if isinstance(record, dict) else None
        if not isinstance(fields, dict):
            reading.errors.append(
                BadLine(line, 'expected {"model": ..., "pk": ..., "fields": {...}}')
            )
        elif str(record.get("model", "")).lower() == wanted:
            reading.add(_user(line, record, fields))
        elif "password" in fields:
            others.add(str(record.get("model")))
    if not reading.users and not reading.errors:
        raise UnreadableExport(f"no {shown(model)} records in this file{_hint(others)}")
    return reading


def _hint(models: set[str]) -> str:
    """Which other models hold passwords: one of them may be a custom user model."""
    if not models:
        return " (expected the output of manage.py dumpdata auth.user)"
    names = ", ".join(shown(m) for m in sorted(models)[:5])
    return f"; records of {names} have passwords: for a custom user model pass --model"


def _user(line: int, record: dict[str, Any], fields: dict[str, Any]) -> SourceUser | BadLine:
    try:
        email = values.text("email", fields.get("email"))
        if email is None:
            return BadLine(line, "has no email address; authdb needs one (add it in Django first)")
        password = values.text("password", fields.get("password")) or "!"
        return SourceUser(
            line=line,
            email=email,
            username=values.text("username", fields.get("username")),
            full_name=values.full_name(
                "first_name", fields.get("first_name"), "last_name", fields.get("last_name")
            ),
            hashed_password=None if password.startswith("!") else password,
            is_superuser=values.boolean("is_superuser", fields.get("is_superuser"), default=False),
            disabled=not values.boolean("is_active", fields.get("is_active"), default=True),
            source_id=None if record.get("pk") is None else str(record["pk"]),
        )
    except values.FieldError as exc:
        return BadLine(line, str(exc))
