"""Application callbacks on account events: ``@auth.on("user_registered")``.

The services record audit events (authdb.services.audit); when their transaction commits, the
events that map to a hook name (see :func:`hook_names`) are handed to the callbacks the
application registered on that ``Auth``, as ``await callback(user, client)``:

- ``user`` is a :class:`UserSnapshot` of the user's fields as the change committed them (for
  ``user_deleted``, as they were just before the row went);
- ``client`` is the :class:`~authdb.services.core.ClientInfo` of the request (address and
  user agent; both None for calls from app code that give no client).

Callbacks run in a task scheduled after the commit: the response does not wait for them, and a
change that rolls back calls nobody. An exception a callback raises is logged on
``authdb.hooks`` with the event name and its traceback; it cannot undo the change or turn the
response into an error. ``Auth.shutdown`` waits for callbacks still running.

The ``Hooks`` of an ``Auth`` ride on its sessionmaker's ``info`` (copied into every session),
so two ``Auth`` instances in one process never see each other's events. With no callback for
an event, recording it costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from authdb.db.models import User
from authdb.services.core import ClientInfo

log = logging.getLogger("authdb.hooks")

# The event names of the spec ("Extending authdb in your own app"), in no particular order.
EVENTS = (
    "user_registered",
    "user_verified",
    "login",
    "logout",
    "password_changed",
    "password_reset",
    "email_changed",
    "user_updated",
    "user_deleted",
    "mfa_enabled",
    "mfa_disabled",
)

# Session.info keys: the Hooks of the session's Auth, and the calls its transaction has due.
HOOKS_INFO_KEY = "authdb_hooks"
_DUE = "authdb_hooks_due"

# Audit events that always mean one hook event.
_HOOK_OF_AUDIT = {
    "registered": "user_registered",  # POST /register, the registration page
    "user_created": "user_registered",  # auth.users.create, `authdb createuser`, import
    "email_verified": "user_verified",
    "login_ok": "login",  # password, MFA completion, passkey: every session opened
    "logout": "logout",
    "password_changed": "password_changed",
    "password_reset": "password_reset",
    "email_changed": "email_changed",  # a requested new address confirmed through its link
    "account_updated": "user_updated",
    "account_deleted": "user_deleted",
    "admin_user_deleted": "user_deleted",
    "mfa_enabled": "mfa_enabled",
    "mfa_disabled": "mfa_disabled",
}


def hook_names(audit_event: str, detail: Mapping[str, object]) -> tuple[str, ...]:
    """The hook events an audit event stands for (often none), given its ``detail``.

    An administrator's change (API, CLI or ``auth.users``) is ``user_updated``, and also
    ``password_changed`` / ``email_changed`` when it set those; an administrator's MFA reset
    is ``mfa_disabled`` only if MFA was on.
    """
    if audit_event == "admin_user_updated":
        changed = detail.get("fields")
        names = ["user_updated"]
        if isinstance(changed, list):
            names += [hook for field, hook in _ADMIN_FIELDS if field in changed]
        return tuple(names)
    if audit_event == "mfa_reset":
        return ("mfa_disabled",) if detail.get("was_on") else ()
    hook = _HOOK_OF_AUDIT.get(audit_event)
    return (hook,) if hook else ()


_ADMIN_FIELDS = (("password", "password_changed"), ("email", "email_changed"))


@dataclass(frozen=True, slots=True)
class UserSnapshot:
    """The user an event is about: the fields of the API's ``User`` (never a hash), as the
    change committed them. ``profile`` holds the application's profile fields, if any."""

    id: int
    username: str
    email: str | None
    pending_email: str | None
    full_name: str | None
    disabled: bool
    is_verified: bool
    is_superuser: bool
    mfa_enabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None
    profile: dict[str, Any] | None = None

    @property
    def is_active(self) -> bool:
        """Not disabled."""
        return not self.disabled

    @classmethod
    def of(cls, user: User) -> UserSnapshot | None:
        """A snapshot of ``user`` from what is loaded, or None if a field would need SQL
        (an expired attribute); never emits SQL, so it is safe in session events."""
        state = sa_inspect(user)
        loaded = state.dict
        values = {}
        for name in _snapshot_columns():
            if name in loaded:
                values[name] = loaded[name]
            elif name in _null_unless_set() and name not in state.expired_attributes:
                # Never loaded nor expired: a row this session inserted without the column,
                # which no server default fills, so it holds NULL.
                values[name] = None
            else:
                return None
        if isinstance(values.get("profile"), dict):
            values["profile"] = copy.deepcopy(values["profile"])  # the callback's own copy
        return cls(**values)


@cache
def _snapshot_columns() -> tuple[str, ...]:
    """The snapshot's fields that are columns of ``users``."""
    mapped = set(sa_inspect(User).column_attrs.keys())
    return tuple(f.name for f in fields(UserSnapshot) if f.name in mapped)


@cache
def _null_unless_set() -> frozenset[str]:
    """Columns that hold NULL when an INSERT leaves them out: loaded with the row (not
    deferred) and without a server-side default."""
    names = set()
    for attr in sa_inspect(User).column_attrs:
        column = attr.columns[0]
        if not attr.deferred and column.server_default is None and column.nullable:
            names.add(attr.key)
    return frozenset(names)


Callback = Callable[[UserSnapshot, ClientInfo], Awaitable[object]]
C = TypeVar("C", bound=Callback)


@dataclass(slots=True)
class _Due:
    """Callbacks a transaction owes once it commits."""

    names: tuple[str, ...]
    user_id: int
    # The user's row in the committing session, if it was there when the event was recorded;
    # read after the commit (no SQL), else the user is loaded afresh by the task.
    row: User | None
    client: ClientInfo
    user: UserSnapshot | None = None


class Hooks:
    """The callbacks one ``Auth`` has registered, by event name, and their running tasks."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {name: [] for name in EVENTS}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None

    def on(self, event: str) -> Callable[[C], C]:
        """Decorator registering ``async def callback(user, client)`` for ``event``.

        Raises ValueError for a name not in :data:`EVENTS`, TypeError (at decoration) for a
        callback that is not an ``async def`` or cannot be called with ``(user, client)``.
        """
        if event not in self._callbacks:
            raise ValueError(f"unknown authdb event {event!r}; known: {', '.join(EVENTS)}")

        def register(callback: C) -> C:
            call = getattr(callback, "__call__", None)  # noqa: B004 - async __call__ objects
            if not (inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(call)):
                raise TypeError(
                    f"@auth.on({event!r}) needs an async def callback(user, client), "
                    f"not {callback!r}"
                )
            try:
                inspect.signature(callback).bind(None, None)
            except TypeError:
                raise TypeError(
                    f"@auth.on({event!r}) calls its callback with two arguments, (user, "
                    f"client); {getattr(callback, '__qualname__', callback)!r} cannot take them"
                ) from None
            except ValueError:
                pass  # no signature to read (a builtin): it will be called all the same
            self._callbacks[event].append(callback)
            return callback

        return register

    def callbacks(self, event: str) -> list[Callback]:
        """The callbacks registered for ``event``, in registration order."""
        return self._callbacks.get(event, [])

    def bind(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Make the sessions of ``sessionmaker`` hand their committed events to these hooks
        (``Auth`` does this with its own); users are loaded through it when needed."""
        info = dict(sessionmaker.kw.get("info") or {})
        info[HOOKS_INFO_KEY] = self
        sessionmaker.configure(info=info)
        self._sessionmaker = sessionmaker

    def wanted(self, audit_event: str, detail: Mapping[str, object]) -> tuple[str, ...]:
        """The hook events of ``audit_event`` that have at least one callback."""
        return tuple(name for name in hook_names(audit_event, detail) if self._callbacks[name])

    @property
    def pending(self) -> int:
        """How many callback tasks are still running."""
        return len(self._tasks)

    async def drain(self, grace: float | None = 10.0) -> None:
        """Wait for the callbacks still running (``Auth.shutdown`` does); those still going
        after ``grace`` seconds (None: no limit) are cancelled, with a warning on
        ``authdb.hooks``."""
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        # A callback may commit changes of its own, which schedule more callbacks.
        while self._tasks:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            _, late = await asyncio.wait(set(self._tasks), timeout=left)
            if late:
                log.warning("cancelling %d authdb event callback(s) still running", len(late))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                return

    def committed(
        self, audit_event: str, user_id: int, client: ClientInfo, detail: Mapping[str, object]
    ) -> None:
        """Schedule the callbacks of ``audit_event``, committed outside any ORM session (a
        sign-in on the native path); their task loads the user as it then stands."""
        names = self.wanted(audit_event, detail)
        if names:
            self._schedule([_Due(names, user_id, None, client)])

    def _schedule(self, due: list[_Due]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("authdb events committed outside an event loop; callbacks not called")
            return
        task = loop.create_task(self._run(due), name="authdb-event-callbacks")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, due: list[_Due]) -> None:
        # In commit order; each event's callbacks one after the other, in registration order.
        for item in due:
            user = item.user or await self._load(item.user_id, item.names)
            if user is None:
                continue
            for name in item.names:
                for callback in list(self._callbacks[name]):
                    try:
                        await callback(user, item.client)
                    except Exception:
                        log.exception(
                            "authdb event callback %s failed on %s (user %s)",
                            getattr(callback, "__qualname__", repr(callback)),
                            name,
                            user.id,
                            extra={"event": name, "user_id": user.id},
                        )

    async def _load(self, user_id: int, names: tuple[str, ...]) -> UserSnapshot | None:
        """The user as stored now, for an event whose session did not hold the row."""
        if self._sessionmaker is None:
            return None
        try:
            async with self._sessionmaker() as db:
                row = await db.get(User, user_id)
        except Exception:
            log.exception("cannot load user %s for authdb event(s) %s", user_id, ", ".join(names))
            return None
        if row is None:
            log.warning("user %s is gone; authdb event(s) %s not called", user_id, ", ".join(names))
            return None
        return UserSnapshot.of(row)


# --- called by authdb.services.audit -------------------------------------------------------------


def note(
    session: Session,
    audit_event: str,
    user_id: int | None,
    client: ClientInfo,
    detail: Mapping[str, object],
) -> None:
    """Remember, in ``session``'s transaction, the callbacks ``audit_event`` calls for once
    committed. Nothing is kept when the session's ``Auth`` has no callback for them."""
    hooks = session.info.get(HOOKS_INFO_KEY)
    if not isinstance(hooks, Hooks) or user_id is None:
        return
    names = hooks.wanted(audit_event, detail)
    if not names:
        return
    # The row as this session holds it (no SQL); a deleted user's must be taken now, before
    # the flush removes it from the identity map.
    row = session.identity_map.get(identity_key(User, user_id))
    session.info.setdefault(_DUE, []).append(
        _Due(names, user_id, row if isinstance(row, User) else None, client)
    )


def announce(session: Session) -> None:
    """After a commit: snapshot the users (as committed) and schedule the callbacks due."""
    due: list[_Due] | None = session.info.pop(_DUE, None)
    hooks = session.info.get(HOOKS_INFO_KEY)
    if not due or not isinstance(hooks, Hooks):
        return
    for item in due:
        if item.row is not None:
            item.user = UserSnapshot.of(item.row)
            item.row = None
    hooks._schedule(due)


def forget(session: Session) -> None:
    """A transaction that ended without committing owes no callback."""
    session.info.pop(_DUE, None)
