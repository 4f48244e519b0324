"""Which database errors mean "unavailable, try again later" rather than "a bug".

The drivers report an unreachable or overloaded database in many shapes: a refused socket
before SQLAlchemy wraps anything, asyncpg's connection and server-state errors (raw from the
session-check pool, or wrapped by SQLAlchemy), SQLAlchemy's own pool timeout, sqlite3's "unable to
open" and "locked". They are recognised here, in one place; the HTTP layer answers them with
503 and ``Retry-After`` instead of a 500.
"""

from __future__ import annotations

import errno
import socket
import sqlite3

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc

_ASYNCPG_ERRORS: tuple[type[BaseException], ...] = ()
try:  # asyncpg is the optional PostgreSQL extra
    from asyncpg import exceptions as _asyncpg  # type: ignore[import-untyped]

    # InterfaceError: "connection is closed" (a dead connection used again). InternalClientError:
    # the server's "terminating connection" arrived on an idle pooled connection before its
    # socket closed, leaving the protocol in a state it cannot leave ("cannot switch to state").
    _ASYNCPG_ERRORS = (_asyncpg.InterfaceError, _asyncpg.InternalClientError)
except ImportError:  # pragma: no cover - only without the extra
    pass

# SQLSTATE classes that describe the server's state, not the statement: connection exception
# (08), insufficient resources such as too many clients (53), operator intervention such as a
# shutdown or a cancelled query (57), system I/O error (58).
_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})

_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
    }
)

# sqlite3.OperationalError messages that mean the file cannot be used right now; others
# ("no such table", syntax errors) are bugs or a missing migration and stay 500s.
_SQLITE_MESSAGES = (
    "unable to open database",
    "database is locked",
    "disk i/o error",
    "database or disk is full",
)

# How far to follow ``.orig`` and ``__cause__`` (not ``__context__``: an error raised while
# handling an outage is a bug of its own): SQLAlchemy wraps an adapter error wrapping the driver's.
_MAX_DEPTH = 8


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database is unreachable or overloaded (retry later).

    False for everything else, including constraint violations and programming errors, which
    must keep surfacing as the bugs they are.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    for _ in range(_MAX_DEPTH):
        if link is None or id(link) in seen:
            return False
        seen.add(id(link))
        if _signals_outage(link):
            return True
        orig = getattr(link, "orig", None)  # SQLAlchemy's DBAPIError keeps the driver's error
        link = orig if isinstance(orig, BaseException) else link.__cause__
    return False


def _signals_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.TimeoutError):
        return True  # SQLAlchemy's TimeoutError: no pooled connection came free in time
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True  # the dialect recognised a dropped connection
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in _SQLSTATE_CLASSES:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(text in message for text in _SQLITE_MESSAGES)
    if isinstance(exc, _ASYNCPG_ERRORS):
        message = str(exc)
        return "closed" in message or "cannot switch to state" in message
    return False


# SQLSTATE serialization_failure and deadlock_detected: two transactions met; either may retry.
_CONFLICT_STATES = frozenset({"40001", "40P01"})


def is_concurrent_change(exc: BaseException) -> bool:
    """True when ``exc`` says a concurrent transaction got in the way (a retry may succeed).

    SQLAlchemy's StaleDataError (the row an UPDATE or DELETE meant was deleted meanwhile, e.g.
    an account deleted while its owner edits it) and PostgreSQL's serialization failures and
    deadlocks. The HTTP layer answers 409 instead of a 500.
    """
    link: BaseException | None = exc
    for _ in range(_MAX_DEPTH):
        if link is None:
            return False
        if isinstance(link, orm_exc.StaleDataError):
            return True
        if getattr(link, "sqlstate", None) in _CONFLICT_STATES:
            return True
        orig = getattr(link, "orig", None)
        link = orig if isinstance(orig, BaseException) else link.__cause__
    return False
