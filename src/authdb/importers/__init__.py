"""Reading other systems' user exports (``authdb users import --from FORMAT``).

One module a source system, each a ``Reader`` (text in, ``Reading`` out): ``jsonl`` (authdb's
own), ``django``, ``fastapi_users``, ``supabase``, ``keycloak``. Readers only map fields and name
bad lines; ``authdb.services.importing`` checks, hashes and writes.
"""

from __future__ import annotations

from authdb.importers import django, fastapi_users, jsonl, keycloak, supabase
from authdb.importers.records import (
    BadLine,
    Note,
    Reader,
    Reading,
    Skipped,
    SourceUser,
    UnreadableExport,
    read_text,
)

# ``--from`` names and their readers, in the order help lists them.
FORMATS: dict[str, Reader] = {
    "jsonl": jsonl.read,
    "django": django.read,
    "fastapi-users": fastapi_users.read,
    "supabase": supabase.read,
    "keycloak": keycloak.read,
}

__all__ = [
    "FORMATS",
    "BadLine",
    "Note",
    "Reader",
    "Reading",
    "Skipped",
    "SourceUser",
    "UnreadableExport",
    "read_text",
]
