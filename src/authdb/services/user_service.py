"""``auth.users``: account services for application code.

Each method calls the function the HTTP API or the CLI calls for the same thing, so the same
rules apply, the same exceptions are raised (``authdb.errors``), the same audit events are
recorded and the application's callbacks (``@auth.on``) fire after the commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel

from authdb.db.models import User
from authdb.errors import InvalidInput, NotFound
from authdb.services import admin, provisioning
from authdb.services.core import ClientInfo, Core
from authdb.services.users import find_by_login

# Who acted, when app code does not say: nobody the audit trail can name.
_NO_CLIENT = ClientInfo()


class UserService:
    """Users by id, for application code: ``await auth.users.get(user_id)`` and the rest.

    Every method takes an optional ``client`` (the request's address and user agent, as
    ``authdb.services.core.ClientInfo``) for the audit trail and the event callbacks. Returned
    users are detached ``authdb.db.models.User`` rows: read them, change them through
    :meth:`update`.
    """

    def __init__(self, core: Core) -> None:
        self._core = core

    async def get(self, user_id: int) -> User:
        """The user with this id. Raises NotFound ("User not found")."""
        return await admin.get_user(self._core, user_id)

    async def get_by_login(self, login: str) -> User:
        """The user whose username or email is ``login``, in any case (a username that is
        another user's email names the former). Raises NotFound ("User not found")."""
        async with self._core.sessionmaker() as db:
            user = await find_by_login(db, login)
        if user is None:
            raise NotFound("User not found")
        return user

    async def create(
        self,
        *,
        username: str,
        email: str,
        password: str,
        full_name: str | None = None,
        is_verified: bool = False,
        is_superuser: bool = False,
        profile: Mapping[str, Any] | BaseModel | None = None,
        client: ClientInfo | None = None,
    ) -> User:
        """Create a user under the rules of registration (username form, email syntax,
        password policy and the application's password validators, profile model).

        ``is_verified`` is False unless the application has itself proven the address. Fires
        ``user_registered``. Raises InvalidInput (``field`` names the input) and Conflict
        ("Username already registered" / "Email already registered").
        """
        return await provisioning.create_user(
            self._core,
            username=username,
            email=email,
            password=password,
            full_name=full_name,
            is_verified=is_verified,
            is_superuser=is_superuser,
            profile=profile,
            client=client or _NO_CLIENT,
        )

    async def update(
        self, user_id: int, *, client: ClientInfo | None = None, **fields: object
    ) -> User:
        """Change fields as an administrator does (``PATCH /users/{id}``): ``username``,
        ``email``, ``full_name``, ``password``, ``disabled``, ``is_verified``,
        ``is_superuser`` and, with a profile model, ``profile``.

        A new email is unverified unless ``is_verified`` comes with it; disabling or a new
        password ends the user's sessions. Fires ``user_updated`` (and ``password_changed`` /
        ``email_changed`` when those changed). Returns the user as updated. Raises NotFound,
        InvalidInput (an unknown field, a null where none is allowed, a broken rule), Conflict
        (a taken username or email; the last active superuser disabled or demoted).
        """
        allowed = admin.UserChanges.__optional_keys__ | admin.UserChanges.__required_keys__
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise InvalidInput(f"Unknown field: {unknown[0]}", field=unknown[0])
        changes = cast(admin.UserChanges, dict(cast(Mapping[str, object], fields)))
        return await admin.update_user(self._core, user_id, changes, client=client or _NO_CLIENT)

    async def set_password(
        self, user_id: int, password: str, *, client: ClientInfo | None = None
    ) -> None:
        """Set the password (the policy and the application's validators apply); every
        session of the user ends. Fires ``password_changed``. Raises NotFound, InvalidInput
        (field ``password``)."""
        await provisioning.set_user_password(self._core, user_id, password, client or _NO_CLIENT)

    async def disable(self, user_id: int, *, client: ClientInfo | None = None) -> User:
        """Disable the user (``authdb users disable``): every session ends and sign-in is
        refused. Fires ``user_updated``. Raises NotFound, Conflict for the last active
        superuser."""
        return await self.update(user_id, disabled=True, client=client)

    async def delete(self, user_id: int, *, client: ClientInfo | None = None) -> None:
        """Delete the user (``authdb users delete``); sessions and tokens go with them, and
        the application's rows whose foreign key declares ON DELETE CASCADE. Fires
        ``user_deleted``. Raises NotFound; Conflict for the last active superuser, or when
        the application's rows still reference the user (the detail names the table;
        nothing is deleted)."""
        await admin.delete_user(self._core, user_id, client=client or _NO_CLIENT)
