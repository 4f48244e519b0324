"""An event loop of its own, in a thread, for work whose every await must not wait its turn
behind the application's requests.

A PostgreSQL sign-in is six round trips in one transaction. On the application's loop, during
a flood of other requests, each of them waits a whole turn of that loop (several milliseconds
each), so sign-ins crawl while the transaction holds its locks. Run on a loop that has nothing
else to do, the transaction costs the application's loop one hand-over and one wake-up, as
SQLite's writer thread does (authdb.db.sign_in_store).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs coroutines on a private event loop in a daemon thread named ``name``, started on
    the first :meth:`run` (again after :meth:`stop`: an ``Auth`` may be started anew)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()`` on the private loop; its result, or what it raised.

        Cancelling the caller does not cancel ``work``: it runs to its end, as a write handed
        to a worker thread does, so a transaction is never cut between two statements.
        """
        future = asyncio.run_coroutine_threadsafe(_call(work), self._running_loop())
        outcome = asyncio.wrap_future(future)
        # Read the result even when the caller has gone: asyncio would log it as never read.
        outcome.add_done_callback(_read)
        return await asyncio.shield(outcome)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    async def stop(self, last: Callable[[], Awaitable[None]]) -> None:
        """Run ``last`` on the private loop, then end the loop and its thread (``last`` waits
        for work in flight itself, if it must). Nothing happens if the loop never started."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_call(last), loop))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join)
            loop.close()


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def _read(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
