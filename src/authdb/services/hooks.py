"""Application callbacks on account events: ``@auth.on("user_registered")``.

Callbacks run after the change is committed; one that raises is logged and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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

Callback = Callable[[Any, Any], Awaitable[None]]
C = TypeVar("C", bound=Callback)


class Hooks:
    """The callbacks one ``Auth`` has registered, by event name."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {name: [] for name in EVENTS}

    def on(self, event: str) -> Callable[[C], C]:
        """Decorator registering ``async def callback(user, client)`` for ``event``.

        Raises ValueError for a name not in :data:`EVENTS`.
        """
        if event not in self._callbacks:
            raise ValueError(f"unknown authdb event {event!r}; known: {', '.join(EVENTS)}")

        def register(callback: C) -> C:
            self._callbacks[event].append(callback)
            return callback

        return register

    def callbacks(self, event: str) -> list[Callback]:
        return self._callbacks.get(event, [])
