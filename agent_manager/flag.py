"""``Flag``: a one-shot ``asyncio.Event`` for per-run book-keeping.

Why not ``asyncio.Event``: each one carries a deque for its waiters, about 860 bytes, and a run
had two of them (its status is final; its clean-up is done). With 2,000 Daytona runs in flight
that was 3.4 MB of the service's memory for signals that almost nobody waits on. A ``Flag`` is
56 bytes; the future its waiters share is made only when somebody waits.
"""

from __future__ import annotations

import asyncio


class Flag:
    """Set once, never cleared; any number of tasks may ``wait``."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        # Shielded: a waiter that is cancelled must not cancel the future the others wait on.
        await asyncio.shield(self._waiter)
