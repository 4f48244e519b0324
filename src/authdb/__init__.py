"""authdb: database-backed user authentication for FastAPI.

The public API, imported on first use (so that ``authdb.resource``, token verification in other
services, does not load the database layer):

- ``Auth(settings=None, *, profile=None, features=None, email_sender=None,
  password_validators=())``: one application's authentication; its routers, dependencies,
  ``lifespan`` / ``lifespan_with``, ``on`` (events) and ``users`` (``UserService``).
- ``Settings``: every ``AUTHDB_*`` setting; ``InvalidSettings`` names the variable at fault.
- ``User``: the ORM row of ``users`` that ``current_user`` and friends hand to your routes.
- ``UserSnapshot``, ``ClientInfo``: what an event callback receives; ``EVENTS``: their names.
- ``EmailSender``, ``PasswordValidator``: the Protocols of ``email_sender`` and of each
  ``password_validators`` item.
- Errors: ``AuthError`` (base; ``detail`` is safe to show) and the ones ``auth.users`` raises,
  ``NotFound``, ``Conflict``, ``InvalidInput``; ``SchemaOutOfDate`` (run ``authdb migrate``),
  ``TemplateProblem`` (an email template that cannot render), ``MissingExtra`` (install the
  extra it names).

Your own tables and Alembic migrations: ``authdb.db.schema`` (``Base``, ``include_object``,
``include_name``, ``upgrade_authdb``). docs/extending.md describes each of these.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authdb.auth import Auth, SchemaOutOfDate
    from authdb.db.models import User
    from authdb.errors import AuthError, Conflict, InvalidInput, NotFound
    from authdb.extras import MissingExtra
    from authdb.mail import EmailSender, TemplateProblem
    from authdb.services.core import ClientInfo, PasswordValidator
    from authdb.services.hooks import EVENTS, UserSnapshot
    from authdb.services.user_service import UserService
    from authdb.settings import Settings
    from authdb.settings_checks import InvalidSettings

__all__ = [
    "EVENTS",
    "Auth",
    "AuthError",
    "ClientInfo",
    "Conflict",
    "EmailSender",
    "InvalidInput",
    "InvalidSettings",
    "MissingExtra",
    "NotFound",
    "PasswordValidator",
    "SchemaOutOfDate",
    "Settings",
    "TemplateProblem",
    "User",
    "UserService",
    "UserSnapshot",
]
__version__ = "0.2.0"  # also in pyproject.toml; tests check they agree

_LAZY = {
    "Auth": "authdb.auth",
    "SchemaOutOfDate": "authdb.auth",
    "User": "authdb.db.models",
    "AuthError": "authdb.errors",
    "Conflict": "authdb.errors",
    "InvalidInput": "authdb.errors",
    "NotFound": "authdb.errors",
    "MissingExtra": "authdb.extras",
    "EmailSender": "authdb.mail",
    "TemplateProblem": "authdb.mail",
    "ClientInfo": "authdb.services.core",
    "PasswordValidator": "authdb.services.core",
    "EVENTS": "authdb.services.hooks",
    "UserSnapshot": "authdb.services.hooks",
    "UserService": "authdb.services.user_service",
    "Settings": "authdb.settings",
    "InvalidSettings": "authdb.settings_checks",
}


def __getattr__(name: str) -> Any:
    """PEP 562: the public names, imported when first asked for."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'authdb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
