"""The Daytona backend's own thread and event loop, and the bridges to the service's loop.

Why: with thousands of Daytona runs, the SDK's per-call work (its async create and polling,
its ``with_span``/``with_metric``/``intercept_errors`` wrappers, log WebSocket parsing) kept the
service's event loop busy, and every HTTP request waited behind it (issue 15, notes 15b/15f).
All of it now runs on one thread per executor with its own asyncio loop, started at first use
and stopped (and joined) by ``DaytonaExecutor.close``. The service's loop only gets finished
results (``DaytonaLoop.run``) and batches of output (``Handoff``): per tick of the Daytona loop
at most one wake-up of the service's loop carries everything that became ready in that tick.

Nothing here touches the database: results and chunks are handed to the caller's loop, which
does the bookkeeping as it does for the other backends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from agent_manager.errors import ExecutorUnavailable

log = logging.getLogger("agent_manager.executors.daytona")
T = TypeVar("T")
DRAIN_S = 15.0  # at close: how long the Daytona loop's own clean-ups (deletes) may still take
# Added to the Daytona thread's nice value on Linux (the service's own threads keep theirs). Both threads
# share one GIL: without this, on a busy machine the SDK's work took the CPU from the HTTP loop
# while 2,000 runs were being submitted (submission 11-20 s instead of 8 s, fairness up to 2.05);
# at +10 the OS runs the service's loop first (notes/issue-15f.md).
THREAD_NICE = 10
_END: Any = object()
T_in = TypeVar("T_in", contravariant=True)


class Outlet(Protocol[T_in]):
    """Where the SDK side puts a stream's items (a run's chunks, a terminal's bytes): ``Handoff``
    on the Daytona thread, ``daytona_worker.PipeOutlet`` in the worker process. ``put`` waits
    while the reader is ``limit`` items behind."""

    async def put(self, item: T_in) -> None: ...

    def end(self) -> None: ...


class DaytonaLoop:
    """One thread running one asyncio loop for the SDK. ``run`` is called from the service's
    loop; ``post`` from the Daytona loop (callbacks for the service's loop, batched per tick)."""

    def __init__(self, name: str = "daytona-loop") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._calls: set[asyncio.Task[Any]] = set()  # Daytona-side tasks of ``run`` (cancelled at close)
        self._outbox: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._flushing = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def on_thread(self) -> bool:
        """True when called from the Daytona thread (tests assert where SDK calls run)."""
        return self.thread is not None and threading.current_thread() is self.thread

    def _ensure(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise ExecutorUnavailable("the Daytona executor is closed")
        if self.loop is None:
            self._main = asyncio.get_running_loop()
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self._serve, args=(self.loop,), name=self.name, daemon=True)
            self.thread.start()
        return self.loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        if sys.platform.startswith("linux"):  # per thread only on Linux (elsewhere: the whole process)
            with contextlib.suppress(OSError):  # raising one's nice value is always allowed
                me = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, me, min(os.getpriority(os.PRIO_PROCESS, me) + THREAD_NICE, 19))
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                leftovers = asyncio.all_tasks(loop)
                for task in leftovers:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def run(self, coro: Coroutine[Any, Any, T],
                  orphan: Callable[[T], Awaitable[object]] | None = None) -> T:
        """``coro`` run on the Daytona loop; its result (or error) here. Cancelling the caller
        cancels it there. ``orphan``: what to do (there) with a result nobody waits for any more,
        e.g. a started run whose caller was cancelled the moment it started: it is ended, not lost."""
        try:
            loop = self._ensure()
        except BaseException:
            coro.close()
            raise
        result: concurrent.futures.Future[T] = concurrent.futures.Future()
        holder: list[asyncio.Task[T]] = []

        def done(task: asyncio.Task[T]) -> None:
            self._calls.discard(task)
            if task.cancelled():
                result.cancel()
                return
            exc = task.exception()
            try:
                if exc is not None:
                    result.set_exception(exc)
                else:
                    result.set_result(task.result())
            except concurrent.futures.InvalidStateError:  # the caller went away first
                if exc is None and orphan is not None:
                    loop.create_task(orphan(task.result()))  # type: ignore[arg-type]

        def begin() -> None:
            if result.cancelled():
                coro.close()
                return
            task = loop.create_task(coro)
            holder.append(task)
            self._calls.add(task)
            task.add_done_callback(done)

        loop.call_soon_threadsafe(begin)
        try:
            return await asyncio.wrap_future(result)
        except asyncio.CancelledError:
            if not result.cancel() and not result.cancelled() and result.exception() is None and orphan:
                value = result.result()  # finished just before we were cancelled: nobody has it
                loop.call_soon_threadsafe(lambda: loop.create_task(orphan(value)))  # type: ignore[arg-type]
            loop.call_soon_threadsafe(lambda: holder and holder[0].cancel())
            raise

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        """From the Daytona loop: call ``callback(*args)`` on the service's loop. Everything
        posted in one tick of the Daytona loop travels in one wake-up of the service's loop."""
        self._outbox.append((callback, args))
        if not self._flushing:
            self._flushing = True
            assert self.loop is not None
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._outbox, self._flushing = self._outbox, [], False
        if self._main is not None and not self._main.is_closed():
            try:
                self._main.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the service's loop closed meanwhile: nobody is listening
                pass

    async def close(self) -> None:
        """Cancel what callers still wait for, let clean-ups (deletes) finish for up to
        ``DRAIN_S``, then stop the loop and join the thread (off the service's loop)."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self.loop, self.thread
        if loop is None or thread is None:
            return
        done: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(self._drain(), loop)
        try:
            await asyncio.wrap_future(done)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join)

    def abandon(self) -> None:
        """Stop the loop without clean-ups: for an executor dropped without ``close``."""
        self._closed = True
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)

    async def settle_calls(self) -> None:
        """On the Daytona loop, before the executor closes its client: cancel what callers
        still wait for (but not the caller of this) and let their clean-ups (a cancelled
        create deletes its sandbox) finish, for up to ``DRAIN_S``."""
        me = asyncio.current_task()
        calls = [task for task in self._calls if task is not me]
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=DRAIN_S)

    async def _drain(self) -> None:
        for task in list(self._calls):
            task.cancel()
        me = asyncio.current_task()
        deadline = asyncio.get_running_loop().time() + DRAIN_S
        while (others := {t for t in asyncio.all_tasks() if t is not me}) and (
                left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(others, timeout=left)
        for task in others:
            log.warning("Daytona loop: %s still running at close; cancelled", task.get_coro())
            task.cancel()


def _deliver(batch: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    for callback, args in batch:
        try:
            callback(*args)
        except Exception:  # one reader's bug must not lose the others' output
            log.exception("Daytona hand-over to the service's loop failed")


class Handoff(Generic[T]):
    """A bounded stream of items from the Daytona loop (``put``, ``end``) to one reader on the
    service's loop (``batches``).

    Items are moved in batches through ``DaytonaLoop.post`` (one wake-up per Daytona tick for
    all runs). At most ``limit`` items wait between the two sides: ``put`` then waits (on the
    Daytona loop) until the reader has taken the backlog down to half, so a slow reader pauses
    the log stream instead of growing memory. A reader that stops early (``abandon``) lets the
    writer go on, dropping what it puts.
    """

    def __init__(self, bridge: DaytonaLoop, limit: int) -> None:
        self._bridge, self._limit = bridge, limit
        self._lock = threading.Lock()
        # Shared, under the lock:
        self._pending: list[T] = []
        self._held = 0
        self._posted = self._blocked = self._ending = self._abandoned = False
        # Daytona side:
        self._room: asyncio.Event | None = None
        # Service side:
        self._buffer: deque[T] = deque()
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    # -- Daytona side ------------------------------------------------------------------------

    async def put(self, item: T) -> None:
        with self._lock:
            if self._abandoned or self._ending:
                return
            self._pending.append(item)
            self._held += 1
            post, self._posted = not self._posted, True
            full = self._held >= self._limit
            if full:
                if self._room is None:
                    self._room = asyncio.Event()
                self._room.clear()
                self._blocked = True
        if post:
            self._bridge.post(self._take)
        if full:
            assert self._room is not None
            await self._room.wait()

    def end(self) -> None:
        """No more items: the reader ends once it has everything before this."""
        with self._lock:
            if self._ending:
                return
            self._ending = True
            post, self._posted = not self._posted, True
        if post:
            self._bridge.post(self._take)

    # -- service side ------------------------------------------------------------------------

    def _take(self) -> None:
        with self._lock:
            batch, self._pending, self._posted = self._pending, [], False
            ended = self._ending
        self._buffer.extend(batch)
        self._ended = self._ended or ended
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def batches(self) -> AsyncIterator[list[T]]:
        """Everything that arrived since the last batch, until the end."""
        try:
            while True:
                while not self._buffer and not self._ended:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                if not self._buffer:
                    return
                batch = list(self._buffer)
                self._buffer.clear()
                self._release(len(batch))
                yield batch
        finally:
            if not self._ended:
                self.abandon()

    def _release(self, count: int) -> None:
        with self._lock:
            self._held -= count
            wake = self._blocked and self._held <= self._limit // 2
            if wake:
                self._blocked = False
        if wake:
            self._wake()

    def _wake(self) -> None:
        room, loop = self._room, self._bridge.loop
        if room is not None and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(room.set)
            except RuntimeError:  # the Daytona loop is gone: nobody waits
                pass

    def abandon(self) -> None:
        """The reader is gone: the writer never waits again and its items are dropped."""
        with self._lock:
            self._abandoned = True
            self._pending.clear()
            self._held = 0
            wake, self._blocked = self._blocked, False
        self._buffer.clear()
        if wake:
            self._wake()
