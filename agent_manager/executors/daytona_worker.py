"""The Daytona worker process: the SDK and every sandbox of one executor, out of the service.

Run as ``python -P -m agent_manager.executors.daytona_worker`` by ``daytona_link.WorkerLink``
(the service's side), at first use of the backend. Why a process: on a thread, the SDK's work
for thousands of runs shared the GIL with the HTTP loop, and API requests waited for it
(notes 15f). Here it has its own interpreter; the service only reads finished results and
batches of output from a pipe (``daytona_wire`` describes the frames).

- Protocol: frames on fd 0 (in) and on the process's original stdout (out); fd 1 is then
  pointed at stderr, so nothing printed by a library can corrupt a frame. Logs go to stderr
  (the service's). The API key and the runs' environments arrive only through the pipe.
- Life: the first message (``hello``) configures a ``DaytonaCore``; ``close`` ends every run
  and deletes every sandbox. If the service goes away without ``close`` (its end of the pipe
  closes, or SIGTERM, which is also the parent-death signal on Linux), the worker does the same
  clean-up, bounded, then exits. SIGINT (a Ctrl-C at the service's terminal) is ignored: the
  service decides when the worker ends.
- Back-pressure: a stream (a run's output, a terminal's bytes) may have ``limit`` items that
  the service has not acknowledged; past that, the SDK's callback waits (as with the
  in-process ``Handoff``) until the service has read half of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from agent_manager.errors import ExecutionError
from agent_manager.executors.daytona_command import ExitSlot
from agent_manager.executors.daytona_heap import Trimmer, freeze_start_up, quiet_sdk_spans, small_tls_buffers
from agent_manager.executors.daytona_wire import (
    HEADER,
    Message,
    WireError,
    b64,
    decode,
    encode,
    encode_all,
    error_of,
    frame_length,
    section_in,
    spec_in,
    unb64,
)

log = logging.getLogger("agent_manager.executors.daytona")
T = TypeVar("T")
DRAIN_S = 15.0  # at close: how long in-flight calls and clean-ups (deletes) may still take
PR_SET_PDEATHSIG = 1
# Added to the worker's nice value (POSIX): when the machine is busy, the service's HTTP loop gets
# the CPU first and the SDK's work waits (as the Daytona thread did at +10: notes 15f/15g).
WORKER_NICE = 10


class Link:
    """The worker's end of the pipe: everything sent in one tick of its loop leaves in one
    frame (outputs of a stream before that stream's exit)."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self._out: list[Message] = []
        self._dirty: dict[int, PipeOutlet] = {}
        self._scheduled = False
        self.live: Callable[[], int] = lambda: 0
        self._live_sent = 0

    def send(self, message: Message) -> None:
        self._out.append(message)
        self._schedule()

    def dirty(self, outlet: PipeOutlet) -> None:
        self._dirty[outlet.ident] = outlet
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        messages: list[Message] = []
        for outlet in self._dirty.values():
            messages += outlet.drain()
        self._dirty.clear()
        messages += self._out
        self._out = []
        live = self.live()
        if live != self._live_sent:
            self._live_sent = live
            messages.append({"t": "live", "n": live})
        if messages and not self._transport.is_closing():
            frames, refused = encode_all(messages)
            for message in refused:  # an answer too large to send: the caller gets an error instead
                log.error("Daytona worker: a %r message exceeds the frame limit; not sent", message["t"])
                if message["t"] == "ret":
                    frames += encode([{"t": "ret", "c": message["c"],
                                       "e": {"k": "execution", "m": "the answer is too large to pass on"}}])
            self._transport.write(frames)


class PipeOutlet:
    """The worker's side of one stream (``put``/``end``, like ``daytona_loop.Handoff``)."""

    def __init__(self, link: Link, ident: int, limit: int, binary: bool, forget: Callable[[int], None]) -> None:
        self.link, self.ident, self.limit, self.binary = link, ident, limit, binary
        self._forget = forget
        self._pending: list[Any] = []
        self._held = 0
        self._room: asyncio.Event | None = None  # made when first needed: most runs never fill up
        self._ending = self._ended = self._abandoned = False

    async def put(self, item: Any) -> None:
        if self._abandoned or self._ending:
            return
        self._pending.append(item)
        self._held += 1
        self.link.dirty(self)
        if self._held >= self.limit:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def end(self) -> None:
        if not self._ending:
            self._ending = True
            self.link.dirty(self)

    def ack(self, count: int) -> None:
        self._held = max(0, self._held - count)
        if self._room is not None and self._held <= self.limit // 2:
            self._room.set()

    def abandon(self) -> None:
        self._abandoned = True
        self._pending.clear()
        self._held = 0
        if self._room is not None:
            self._room.set()

    def drain(self) -> list[Message]:
        """This tick's items as one message (neighbours of one stream joined), then the end."""
        out: list[Message] = []
        if self._pending:
            items, self._pending = self._pending, []
            if self.binary:
                out.append({"t": "o", "i": self.ident, "b": b64(b"".join(items)), "n": len(items)})
            else:
                pairs: list[list[str]] = []
                for chunk in items:
                    if pairs and pairs[-1][0] == chunk.stream:
                        pairs[-1][1] += chunk.text
                    else:
                        pairs.append([chunk.stream, chunk.text])
                out.append({"t": "o", "i": self.ident, "p": pairs, "n": len(items)})
        if self._ending and not self._ended:
            self._ended = True
            out.append({"t": "end", "i": self.ident})
            self._forget(self.ident)
        return out


class Worker:
    """Dispatches the service's messages onto one ``DaytonaCore``."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.core: Any = None
        self.outlets: dict[int, PipeOutlet] = {}
        self.runs: dict[int, Any] = {}  # DaytonaExecution by stream id
        self.ptys: dict[int, Any] = {}  # DaytonaPty by stream id
        self.opening: dict[int, asyncio.Task[Any]] = {}  # starts and terminal opens in flight
        self.calls: dict[int, asyncio.Task[Any]] = {}
        self.closed = False
        self.trimmer = Trimmer()  # free C-heap pages back to the system as runs come and go
        self.ops: dict[str, Callable[[Message], Coroutine[Any, Any, Any]]] = {
            "start": self.start, "cancel": self.cancel, "available": self.available,
            "prepare": self.prepare, "skip_sweep": self.skip_sweep, "settings": self.settings,
            "warm": self.warm, "resize_pool": self.resize_pool, "list": self.list, "sweep": self.sweep,
            "pty_open": self.pty_open, "pty_write": self.pty_write, "pty_resize": self.pty_resize,
            "pty_wait": self.pty_wait, "pty_close": self.pty_close, "stats": self.stats, "tune": self.tune,
            "close": self.close}

    # -- messages ----------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        kind = msg["t"]
        if kind == "hello":
            self.hello(msg)
        elif kind == "call":
            op = self.ops.get(msg.get("op", ""))
            if op is None or not isinstance(msg.get("c"), int):
                raise WireError(f"unknown call {msg.get('op')!r}")
            if self.core is None:
                raise WireError("call before hello")
            cid: int = msg["c"]
            self.trimmer.poke()
            task: asyncio.Task[Any] = asyncio.create_task(op(msg))
            self.calls[cid] = task
            task.add_done_callback(lambda done: self.answer(cid, done))
        elif kind == "drop":
            if (dropped := self.calls.get(msg.get("c"))) is not None:  # type: ignore[arg-type]
                dropped.cancel()
        elif kind == "ack":
            if (outlet := self.outlets.get(msg.get("i"))) is not None:  # type: ignore[arg-type]
                outlet.ack(int(msg.get("n", 0)))
        elif kind == "abandon":
            if (outlet := self.outlets.get(msg.get("i"))) is not None:  # type: ignore[arg-type]
                outlet.abandon()
        else:
            raise WireError(f"unknown message type {kind!r}")

    def hello(self, msg: Message) -> None:
        from agent_manager.executors.daytona_core import DaytonaCore
        from agent_manager.settings import Settings

        if self.core is not None:
            raise WireError("hello twice")
        settings = Settings(_core_only=True, kill_grace_s=float(msg["grace"]))
        self.core = DaytonaCore(settings, str(msg["instance"]), retry_attempts=int(msg["attempts"]),
                                retry_base_s=float(msg["base_delay"]), section=section_in(msg["section"]))
        self.core.create_seconds = _Forward(self.link)
        self.link.live = lambda: len(self.core.running)
        with contextlib.suppress(Exception):  # not configured, say: the first call fails again and says why
            self.core.client()  # the SDK imported and its client built now, so that the freeze covers them
        freeze_start_up()

    def answer(self, cid: int, task: asyncio.Task[Any]) -> None:
        self.calls.pop(cid, None)
        if task.cancelled():
            self.link.send({"t": "ret", "c": cid, "e": {"k": "execution", "m": "cancelled"}})
        elif (exc := task.exception()) is not None:
            if not isinstance(exc, ExecutionError | WireError) and not hasattr(exc, "message"):
                log.warning("Daytona worker: %s failed", task.get_coro(), exc_info=exc)
            self.link.send({"t": "ret", "c": cid, "e": error_of(exc)})
        else:
            self.link.send({"t": "ret", "c": cid, "v": task.result()})

    def outlet(self, ident: int, limit: int, binary: bool) -> PipeOutlet:
        outlet = self.outlets[ident] = PipeOutlet(self.link, ident, limit, binary, self._forget)
        return outlet

    def _forget(self, ident: int) -> None:
        self.outlets.pop(ident, None)

    async def _opening(self, ident: int, work: Awaitable[T]) -> T:
        """A start or terminal open that a later ``cancel``/``pty_close`` of ``ident`` can stop
        (by cancelling the call's own task: no second task per start)."""
        task = asyncio.current_task()
        assert task is not None
        self.opening[ident] = task
        try:
            return await work
        finally:
            self.opening.pop(ident, None)

    async def _stop_opening(self, ident: int) -> None:
        task = self.opening.get(ident)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    # -- runs --------------------------------------------------------------------------------

    async def start(self, msg: Message) -> Message:
        from agent_manager.executors.daytona_command import OUTPUT_QUEUE_CHUNKS

        ident = int(msg["i"])
        self.core.settings.kill_grace_s = float(msg.get("grace", self.core.settings.kill_grace_s))
        outlet = self.outlet(ident, OUTPUT_QUEUE_CHUNKS, binary=False)
        info: dict[str, str] = {}
        exit_code = ExitSlot(lambda done: self._exited(ident, done, info))
        try:
            execution = await self._opening(ident, self.core.start(spec_in(msg["spec"]), outlet, exit_code))
        except BaseException as exc:
            outlet.end()
            if not exit_code.done():  # the service forgets the run (its caller has the error)
                exit_code.set_exception(exc if isinstance(exc, Exception) else ExecutionError("cancelled"))
            raise
        self.runs[ident] = execution
        info.update(execution.info)
        execution.info = info  # the same dict from now on: the follower's additions reach the exit message
        return {"info": info}

    def _exited(self, ident: int, done: ExitSlot, info: dict[str, str]) -> None:
        self.runs.pop(ident, None)
        self.trimmer.poke()
        message: Message = {"t": "x", "i": ident, "info": dict(info)}
        if done.error is not None:
            message["e"] = error_of(done.error)
        else:
            message["code"] = done.code
        self.link.send(message)

    async def cancel(self, msg: Message) -> None:
        ident = int(msg["i"])
        await self._stop_opening(ident)
        if (execution := self.runs.get(ident)) is not None:
            await execution.cancel()

    # -- terminals ---------------------------------------------------------------------------

    async def pty_open(self, msg: Message) -> Message:
        from agent_manager.executors.daytona_pty import QUEUE_CHUNKS

        ident = int(msg["i"])
        outlet = self.outlet(ident, QUEUE_CHUNKS, binary=True)
        try:
            pty = await self._opening(ident, self.core.open_pty(
                spec_in(msg["spec"]), int(msg["cols"]), int(msg["rows"]), bool(msg["shell"]), outlet))
        except BaseException:
            outlet.end()
            raise
        self.ptys[ident] = pty
        return {"info": pty.info}

    async def pty_write(self, msg: Message) -> None:
        if (pty := self.ptys.get(int(msg["i"]))) is not None:
            await pty.write(unb64(msg["data"]))

    async def pty_resize(self, msg: Message) -> None:
        if (pty := self.ptys.get(int(msg["i"]))) is not None:
            await pty.resize(int(msg["cols"]), int(msg["rows"]))

    async def pty_wait(self, msg: Message) -> int | None:
        pty = self.ptys.get(int(msg["i"]))
        return None if pty is None else await pty.wait()

    async def pty_close(self, msg: Message) -> Message:
        ident = int(msg["i"])
        await self._stop_opening(ident)
        pty = self.ptys.get(ident)
        if pty is None:
            return {"info": {}}
        try:
            await pty.close()
        finally:
            self.ptys.pop(ident, None)
        return {"info": dict(pty.info)}

    # -- the backend -------------------------------------------------------------------------

    async def available(self, msg: Message) -> Message:
        found = await self.core.check_available()
        return {"ok": found.ok, "reason": found.reason}

    async def prepare(self, msg: Message) -> None:
        await self.core.prepare()

    async def skip_sweep(self, msg: Message) -> None:
        self.core.skip_sweep()

    async def settings(self, msg: Message) -> None:
        """A changed ``[daytona]`` section: the fields are assigned to the core's own (live) one."""
        fresh = section_in(msg["section"])
        for name in type(fresh).model_fields:
            setattr(self.core.section, name, getattr(fresh, name))
        self.core.settings.kill_grace_s = float(msg["grace"])
        await self.core.settings_changed({str(f) for f in msg["changed"]})

    async def warm(self, msg: Message) -> None:
        await self.core.warm(bool(msg.get("network", True)))

    async def resize_pool(self, msg: Message) -> None:
        await self.core.resize_pool(bool(msg.get("drain", False)))

    async def list(self, msg: Message) -> list[dict[str, Any]]:
        return [{k: _plain(v) for k, v in item.items()} for item in await self.core.list_sandboxes()]

    async def sweep(self, msg: Message) -> int:
        return int(await self.core.sweep_sandboxes(bool(msg.get("all", False))))

    async def stats(self, msg: Message) -> Message:
        """Counters of the core, for the service (``DaytonaExecutor.stats``: tests, the scale bench)."""
        core = self.core
        return {"rate_limited": core.backoff.rate_limited, "live": core.live, "reaper_sandboxes": len(
            core.reaper.sandboxes), "pooled": sum(len(pool) for pool in core._pool.values()),
            "heap_trims": self.trimmer.trims}

    async def tune(self, msg: Message) -> None:
        """A shorter shared back-off pause (tests: the production default is 0.5 s)."""
        self.core.backoff.base_delay = float(msg["base_delay"])

    async def close(self, msg: Message | None = None) -> None:
        """End every run and terminal and delete every sandbox (what ``close`` of the
        executor did on its thread); bounded by ``DRAIN_S`` per step."""
        if self.closed:
            return
        self.closed = True
        me = asyncio.current_task()
        calls = [task for task in self.calls.values() if task is not me]
        for task in calls:  # e.g. a start cancelled mid-create: its delete needs the client
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=DRAIN_S)
        if self.core is not None:
            await asyncio.gather(*(pty.close() for pty in list(self.ptys.values())), return_exceptions=True)
            await asyncio.wait_for(self.core.close(), DRAIN_S * 2)


class _Forward:
    """``DaytonaCore.create_seconds`` in the worker: each observation goes to the service's histogram."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def observe(self, seconds: float) -> None:
        self._link.send({"t": "cs", "v": seconds})


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool | list | dict) else str(value)


async def _read(reader: asyncio.StreamReader, worker: Worker) -> None:
    while True:
        try:
            header = await reader.readexactly(HEADER.size)
            body = await reader.readexactly(frame_length(header))
        except asyncio.IncompleteReadError:
            return  # the service closed its end (or went away)
        for message in decode(body):
            worker.handle(message)


async def serve(fd_in: int, fd_out: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd_in, "rb", buffering=0))
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd_out, "wb", buffering=0))
    worker = Worker(Link(transport))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reading = asyncio.create_task(_read(reader, worker))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    if reading.done() and not reading.cancelled() and (exc := reading.exception()) is not None:
        log.error("Daytona worker: protocol error from the service, ending: %s", exc)
    reading.cancel()
    stopping.cancel()
    try:
        await asyncio.wait_for(worker.close(), DRAIN_S * 4)
    except Exception as exc:  # best effort: the service is gone; Daytona's auto-stop/delete remain
        log.error("Daytona worker: clean-up at exit failed: %s", exc)
    worker.trimmer.close()
    worker.link.flush()
    transport.close()


def _die_with_parent() -> None:
    """Linux: SIGTERM (the clean-up path) when the service dies, even if the pipe stays open."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> None:
    fd_out = os.dup(1)
    os.dup2(2, 1)  # print() from any library goes to stderr, never into a frame
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    with contextlib.suppress(OSError, AttributeError):  # raising one's own nice value is always allowed
        os.nice(WORKER_NICE)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="daytona-worker %(levelname)s %(name)s: %(message)s")
    quiet_sdk_spans()
    small_tls_buffers()
    asyncio.run(serve(0, fd_out))


if __name__ == "__main__":
    main()
