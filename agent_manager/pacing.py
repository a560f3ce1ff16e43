"""A few heavy steps per turn of the event loop, so requests get a turn in between.

Why: when 200 runs are submitted at once, each one forks its agent (about 1 ms of the event
loop) and each one later records its end (a commit, the search index). Run back to back in one
turn of the loop, those steps held every HTTP request that arrived meanwhile for the whole
batch: ``/api/health`` took 100-150 ms in the first second of the scale bench. With a pacer,
``per_turn`` callers go at once; later ones queue and are let go ``per_turn`` a turn (a turn
thus holds at most twice ``per_turn``), and the loop polls its sockets between turns. The
total work is the same; nobody waits behind all of it.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Pacer:
    def __init__(self, per_turn: int) -> None:
        if per_turn < 1:
            raise ValueError("per_turn must be at least 1")
        self.per_turn = per_turn
        self._used = 0
        self._reset_scheduled = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def turn(self) -> None:
        """Return at once while this turn has room, else in a later turn (first come, first served)."""
        loop = asyncio.get_running_loop()
        if self._used < self.per_turn and not self._waiting:
            self._used += 1
            self._schedule_reset(loop)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        self._schedule_reset(loop)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(loop)  # it had its slot: hand it on rather than lose it
            raise

    def _schedule_reset(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._reset_scheduled:
            self._reset_scheduled = True
            loop.call_soon(self._next_turn, loop)

    def _next_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new turn: release up to ``per_turn`` waiters (they run in the turn after this one)."""
        self._reset_scheduled = False
        self._used = 0
        while self._waiting and self._used < self.per_turn:
            self._release(loop)
        if self._waiting or self._used:
            self._schedule_reset(loop)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._used += 1
                return
