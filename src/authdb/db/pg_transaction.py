"""Transactions on raw asyncpg connections, with BEGIN retried once on a cut connection.

The session check's pool (``authdb.db.session_reader``) and the sign-in's own connection
(``authdb.db.sign_in_store``) run transactions outside SQLAlchemy. Both follow one rule: a
connection the server has cut (a restart, a terminated backend) shows it only when used, so a
BEGIN that fails that way is retried once on a fresh connection; nothing had been sent yet,
so the retry cannot repeat any work. Past BEGIN, an error is the caller's to see.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from authdb.db.outage import is_outage


def worth_retrying(exc: Exception) -> bool:
    """Whether ``exc`` came from a connection the server had cut (then a fresh connection may
    well work), not from a server that refuses or does not answer (it would only fail again)."""
    return is_outage(exc) and not isinstance(exc, TimeoutError | ConnectionRefusedError)


@contextlib.asynccontextmanager
async def retried_transaction(
    acquire: Callable[[], Awaitable[Any]],
    give_back: Callable[[Any, bool], Awaitable[None]],
) -> AsyncIterator[Any]:
    """An asyncpg connection inside a transaction: committed when the block ends, rolled back
    if the block raises.

    ``acquire()`` returns a connection; ``give_back(connection, sound)`` is called exactly once
    per acquired connection. ``sound`` is False when the connection is not to be trusted with
    more work: its BEGIN or COMMIT failed, or after the block raised it is closed or still
    inside a transaction (the rollback failed or was cancelled). When BEGIN fails with
    :func:`worth_retrying`, a second connection is acquired and BEGIN tried once more.

    Raises whatever BEGIN (on the second try), the block or COMMIT raised.
    """
    for attempt in (1, 2):
        connection = await acquire()
        try:
            # transaction() itself raises on a connection already seen closed.
            transaction = connection.transaction()
            await transaction.start()
        except BaseException as exc:
            await give_back(connection, False)
            if attempt == 1 and isinstance(exc, Exception) and worth_retrying(exc):
                continue
            raise
        try:
            yield connection
        except BaseException:
            # On a connection that died, the server has rolled back already.
            with contextlib.suppress(Exception):
                await transaction.rollback()
            await give_back(connection, _is_idle(connection))
            raise
        try:
            await transaction.commit()
        except BaseException:
            await give_back(connection, False)
            raise
        await give_back(connection, True)
        return


def _is_idle(connection: Any) -> bool:
    """Whether ``connection`` is open and outside any transaction."""
    try:
        return not (connection.is_closed() or connection.is_in_transaction())
    except Exception:
        return False  # a pool may have taken back a connection the server closed
