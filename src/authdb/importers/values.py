"""Field values as exports write them: booleans, timestamps, text; each checked with its line.

``Field`` errors carry the field's name; readers turn them into ``BadLine`` with the line.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Booleans as PostgreSQL's COPY (t/f), SQLite and MySQL (1/0) and JSON (true/false) write them.
_TRUE = frozenset({"t", "true", "1"})
_FALSE = frozenset({"f", "false", "0"})


class FieldError(ValueError):
    """One field's value is unusable: ``str(error)`` is "<field> <why>"."""


def boolean(name: str, value: Any, *, default: bool | None = None) -> bool:
    """A JSON boolean or the number 0 or 1 (SQLite's json_object), or a CSV cell of
    ``t``/``f``, ``true``/``false``, ``1``/``0`` (any case, spaces around ignored).

    An empty or missing value gives ``default``; without one it is an error, as is anything
    else ("yes"), so that a mis-mapped column never silently makes superusers.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if (value is None or value == "") and default is not None:
        return default
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise FieldError(f"{name} must be true or false (t/f, 1/0), not {shown(value)}")


def text(name: str, value: Any) -> str | None:
    """A string, or None for a missing or empty one."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FieldError(f"{name} must be a string, not {shown(value)}")
    return value


def required_text(name: str, value: Any) -> str:
    """A string that must be there and not be empty."""
    found = text(name, value)
    if found is None:
        raise FieldError(f"{name} is required")
    return found


def full_name(first_name: str, first: Any, last_name: str, last: Any) -> str | None:
    """ "First Last" from a first and a last name field (either may be missing), or None."""
    joined = f"{text(first_name, first) or ''} {text(last_name, last) or ''}".strip()
    return joined or None


def timestamp(name: str, value: Any) -> datetime | None:
    """An ISO 8601 or PostgreSQL timestamp ("2024-05-01 10:00:00.123+00"), None when empty.

    A time without an offset is taken as UTC.
    """
    raw = text(name, value)
    if raw is None:
        return None
    cleaned = raw.strip().replace(" ", "T", 1)
    if cleaned[-3:-2] in "+-" and cleaned[-3:].lstrip("+-").isdigit():
        cleaned += ":00"  # PostgreSQL writes "+00"; fromisoformat wants "+00:00"
    try:
        moment = datetime.fromisoformat(cleaned.replace("Z", "+00:00"))
    except ValueError:
        if cleaned.lower() in ("infinity", "-infinity"):
            return (
                datetime.max.replace(tzinfo=UTC)
                if cleaned[0] != "-"
                else datetime.min.replace(tzinfo=UTC)
            )
        raise FieldError(f"{name} is not a timestamp: {shown(value)}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def shown(value: Any) -> str:
    """A short rendering of a value from the file for a message: quoted, control characters
    escaped (no terminal escapes reach the operator's screen), at most 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
