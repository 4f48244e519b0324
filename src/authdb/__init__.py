"""authdb: database-backed user authentication for FastAPI.

``Auth`` and ``Settings`` are imported on first use, so that ``authdb.resource`` (token
verification in other services) does not load the database layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authdb.auth import Auth, SchemaOutOfDate
    from authdb.settings import Settings

__all__ = ["Auth", "SchemaOutOfDate", "Settings"]
__version__ = "0.2.0"  # also in pyproject.toml; tests check they agree

_LAZY = {"Auth": "authdb.auth", "SchemaOutOfDate": "authdb.auth", "Settings": "authdb.settings"}


def __getattr__(name: str) -> Any:
    """PEP 562: the public names, imported when first asked for."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'authdb' has no attribute {name!r}")
