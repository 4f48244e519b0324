"""Which system an export looks like it came from, for the hint when ``--from`` was wrong.

Only consulted after a file failed to read as the format asked for: a guess never overrides
``--from``, it only names the likelier one in the error.
"""

from __future__ import annotations

# Enough of the start to see a header row or the first record.
_HEAD = 4096


def looks_like(text: str) -> str | None:
    """The ``--from`` name this export most likely needs, or None."""
    head = text.lstrip()[:_HEAD]
    first_line = head.split("\n", 1)[0]
    if head.startswith("["):
        if '"model"' in head and '"fields"' in head:
            return "django"
        return "fastapi-users" if '"hashed_password"' in head else None
    if head.startswith("{"):
        if '"realm"' in head or '"users"' in head:
            return "keycloak"
        if '"hashed_password"' in first_line and '"username"' not in first_line:
            return "fastapi-users"
        return "jsonl" if '"username"' in first_line else None
    if "encrypted_password" in first_line:
        return "supabase"
    if "hashed_password" in first_line:
        return "fastapi-users"
    return None
