"""authdb's own JSON Lines format: one user a line.

``{"username": "alice", "email": "alice@example.com", "password": "..."}``, or
``"hashed_password"`` (any format of ``authdb.hashers``) instead of ``password``; optional
``full_name`` (string or null), ``is_superuser``, ``is_verified``, ``disabled`` (true/false).
Blank lines are skipped; unknown fields are refused.
"""

from __future__ import annotations

from typing import Any

from authdb.importers.json_positions import json_lines
from authdb.importers.records import BadLine, Reading, SourceUser

FIELDS = frozenset({
    "username", "email", "full_name", "is_superuser", "is_verified", "disabled",
    "password", "hashed_password",
})  # fmt: skip
_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("username", str, "a string"),
    ("email", str, "a string"),
    ("full_name", (str, type(None)), "a string or null"),
    ("password", str, "a string"),
    ("hashed_password", str, "a string"),
    ("is_superuser", bool, "true or false"),
    ("is_verified", bool, "true or false"),
    ("disabled", bool, "true or false"),
)


def read(text: str) -> Reading:
    """Every line's user, or why that line cannot be one."""
    reading = Reading()
    for number, record in json_lines(text):
        reading.add(record if isinstance(record, BadLine) else _user(number, record))
    return reading


def _user(number: int, record: dict[str, Any]) -> SourceUser | BadLine:
    unknown = set(record) - FIELDS
    if unknown:
        return BadLine(number, f"unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("username", "email"):
        if name not in record:
            return BadLine(number, f"{name} is required")
    for name, kinds, wanted in _TYPES:
        if name in record and not isinstance(record[name], kinds):
            return BadLine(number, f"{name} must be {wanted}")
    if ("password" in record) == ("hashed_password" in record):
        return BadLine(number, "give exactly one of password and hashed_password")
    return SourceUser(
        line=number,
        email=record["email"],
        username=record["username"],
        full_name=record.get("full_name"),
        password=record.get("password"),
        hashed_password=record.get("hashed_password"),
        is_superuser=record.get("is_superuser", False),
        is_verified=record.get("is_verified", False),
        disabled=record.get("disabled", False),
    )
