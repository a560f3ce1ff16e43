"""The service's side of the Daytona worker process (``daytona_worker``): spawn, calls, streams.

``WorkerLink`` starts the worker at first use, sends it the ``[daytona]`` settings (the API key
among them) as its first message, and then carries calls (a start, a cancel, a terminal's
keystrokes, a listing) and their answers, plus every run's output and exit, in frames
(``daytona_wire``). Everything the service sends in one tick of its loop leaves in one frame,
and one frame from the worker carries everything it had ready in one tick of its own.

The worker is the service's child: it is started with a minimal environment (no secret of the
service's own environment; ``WORKER_ENV``) and ``-P`` (nothing imported from the current
directory). When it ends unexpectedly, every call and run in flight fails with a message
saying so, and the next use starts a new worker, which first deletes what the old one left
(the start-up sweep of this instance's sandboxes). ``close`` ends it: every run is ended and
every sandbox deleted by the worker, then its pipe is closed and it is waited for (killed
after ``EXIT_WAIT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import agent_manager
from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import Chunk, ExecSpec
from agent_manager.executors.daytona_wire import (
    HEADER,
    MAX_FRAME,
    Message,
    WireError,
    b64,
    decode,
    encode_all,
    frame_length,
    raise_error,
    spec_out,
    unb64,
)

if TYPE_CHECKING:
    from prometheus_client import Histogram

log = logging.getLogger("agent_manager.executors.daytona")
T = TypeVar("T")
MODULE = "agent_manager.executors.daytona_worker"
# What the worker keeps of the service's environment: finding Python and its libraries, the
# locale, proxies and CA certificates (the SDK's HTTP client honours them). Nothing else: the
# service's environment may hold other secrets, and the worker gets its key through the pipe.
WORKER_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV", "SSL_CERT_FILE",
              "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
              "http_proxy", "https_proxy", "no_proxy", "all_proxy")
CLOSE_S = 75.0  # how long the worker's own clean-up at close may take (its steps are bounded at 15-30 s)
EXIT_WAIT_S = 10.0  # after that, how long it may take to exit before it is killed


def worker_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    # The same code as the service, whatever the current directory or an editable install says.
    root = str(Path(agent_manager.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running, its pipe closed"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class StreamIn(Generic[T]):
    """The service's side of one stream: what the worker sent, in batches, to one reader.
    Taking a batch acknowledges it (the worker's back-pressure); a reader that stops early
    abandons the stream, and the worker then drops what it would have sent."""

    def __init__(self, link: WorkerLink, ident: int) -> None:
        self._link, self.ident = link, ident
        self._buffer: list[tuple[list[T], int]] = []  # not a deque: an empty one is 760 bytes, per run
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, items: list[T], count: int) -> None:
        self._buffer.append((items, count))
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def batches(self) -> AsyncIterator[list[T]]:
        try:
            while True:
                while not self._buffer and not self._ended:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                if not self._buffer:
                    return
                batch: list[T] = []
                count = 0
                for items, n in self._buffer:
                    batch += items
                    count += n
                self._buffer.clear()
                self._link.send({"t": "ack", "i": self.ident, "n": count})
                yield batch
        finally:
            if not self._ended:
                self.abandon()

    def abandon(self) -> None:
        self._buffer.clear()
        if not self._ended:
            self._ended = True
            self._link.send({"t": "abandon", "i": self.ident})


class WorkerLink:
    """One worker process at a time for one executor (a new one after a crash)."""

    def __init__(self, hello: Callable[[], Message], histogram: Histogram | None) -> None:
        self._hello, self._histogram = hello, histogram
        self._proc: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._spawning: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, StreamIn[Any]] = {}
        self.exits: dict[int, tuple[asyncio.Future[int], dict[str, str]]] = {}
        self._outbox: list[Message] = []
        self._flushing = False
        self.generation = 0
        self.live = 0
        self.closed = self._crashed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def next_id(self) -> int:
        return next(self._ids)

    async def ensure(self) -> None:
        """A worker to talk to: the running one, else a new one (shared by concurrent callers)."""
        if self.closed:
            raise ExecutorUnavailable("the Daytona executor is closed")
        if self.alive:
            return
        if self._spawning is None or self._spawning.done():
            self._spawning = asyncio.create_task(self._spawn())
        await asyncio.shield(self._spawning)

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            proc = subprocess.Popen([sys.executable, "-P", "-m", MODULE], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=worker_env(), close_fds=True)
        except OSError as exc:
            raise ExecutorUnavailable(f"could not start the Daytona worker process: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, proc.stdin)
        self._proc, self._transport = proc, transport
        self.generation += 1
        self.send({"t": "hello", **self._hello()})
        self._reader = asyncio.create_task(self._read(reader, proc, transport))
        if self._crashed:  # the last worker died with sandboxes: this one deletes them first
            self._crashed = False
            task = asyncio.create_task(self._sweep_after_crash())
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _sweep_after_crash(self) -> None:
        try:
            await self.call("prepare", spawn=False)
        except (ExecutionError, ExecutorUnavailable) as exc:
            log.warning("Daytona worker restarted; deleting its predecessor's sandboxes failed: %s", exc)

    # -- sending -----------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Queued: everything sent in one tick of this loop leaves in one frame."""
        self._outbox.append(message)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        messages, self._outbox, self._flushing = self._outbox, [], False
        if self.alive and messages:
            assert self._transport is not None
            frames, refused = encode_all(messages)
            self._transport.write(frames)
            for message in refused:  # e.g. a run's inline files past the frame limit: that call fails
                waiter = self._pending.pop(message.get("c", 0), None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ExecutionError(
                        f"too large to pass to the Daytona worker (over {MAX_FRAME} bytes)"))

    async def call(self, op: str, *, spawn: bool = True, **args: Any) -> Any:
        """``op`` done by the worker; its value (or error) here. Cancelling the caller cancels it there."""
        if spawn:
            await self.ensure()
        elif not self.alive:
            raise ExecutorUnavailable("the Daytona worker process is not running")
        cid = self.next_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        self.send({"t": "call", "c": cid, "op": op, **args})
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(cid, None) is not None and self.alive:
                self.send({"t": "drop", "c": cid})
            raise

    def tell(self, op: str, **args: Any) -> None:
        """A call whose answer nobody waits for (e.g. cancel a run whose caller went away)."""
        if self.alive:
            self.send({"t": "call", "c": self.next_id(), "op": op, **args})

    # -- receiving ---------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader, proc: subprocess.Popen[bytes],
                    transport: asyncio.WriteTransport) -> None:
        problem = ""
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                for message in decode(await reader.readexactly(frame_length(header))):
                    self._dispatch(message)
        except asyncio.IncompleteReadError:
            pass
        except (WireError, KeyError, TypeError, ValueError, AttributeError) as exc:  # never guessed at: ended
            problem = f"protocol error: {exc}"
            log.error("Daytona worker sent a bad frame (%s); ending it", exc)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        finally:
            transport.close()
            await self._lost(proc, problem)

    def _dispatch(self, msg: Message) -> None:
        kind = msg["t"]
        if kind == "o":
            stream = self.streams.get(msg["i"])
            if stream is not None:
                items: list[Any] = [unb64(msg["b"])] if "b" in msg else [
                    Chunk("stderr" if s == "stderr" else "stdout", str(text)) for s, text in msg["p"]]
                stream.feed(items, int(msg["n"]))
        elif kind == "end":
            if (stream := self.streams.pop(msg["i"], None)) is not None:
                stream.end()
        elif kind == "x":
            if (found := self.exits.pop(msg["i"], None)) is not None:
                future, info = found
                info.update({str(k): str(v) for k, v in (msg.get("info") or {}).items()})
                if not future.done():
                    if "e" in msg:
                        future.set_exception(raise_error(msg["e"]))
                    else:
                        future.set_result(int(msg["code"]))
        elif kind == "ret":
            waiter = self._pending.pop(msg["c"], None)
            if waiter is not None and not waiter.done():
                if "e" in msg:
                    waiter.set_exception(raise_error(msg["e"]))
                else:
                    waiter.set_result(msg.get("v"))
        elif kind == "live":
            self.live = int(msg["n"])
        elif kind == "cs":
            if self._histogram is not None:
                self._histogram.observe(float(msg["v"]))
        else:
            raise WireError(f"unknown message type {kind!r}")

    async def _lost(self, proc: subprocess.Popen[bytes], problem: str) -> None:
        """The worker is gone: fail what waited on it. Unexpected (not ``close``): said loudly,
        and the next worker sweeps this instance's leftovers."""
        if proc is not self._proc:
            return
        # Taken now, before any await: a new worker may be started meanwhile, and what it is
        # asked must not be failed with this one.
        self._transport, self._proc = None, None
        pending, self._pending = self._pending, {}
        exits, self.exits = self.exits, {}
        streams, self.streams = self.streams, {}
        unexpected = not self.closed
        if unexpected:
            self._crashed = True
        self.live = 0
        try:
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), EXIT_WAIT_S)
        except TimeoutError:
            proc.kill()
            code = await asyncio.to_thread(proc.wait)
        if unexpected:
            reason = f"the Daytona worker process ended unexpectedly ({problem or describe_exit(code)})"
            log.error("%s; %d run(s) in flight fail, the next use starts a new worker", reason, len(exits))
        else:
            reason = "the Daytona executor is closed"
        for future in pending.values():
            if not future.done():
                future.set_exception(ExecutorUnavailable(reason))
        for future, _ in exits.values():
            if not future.done():
                future.set_exception(ExecutionError(
                    f"{reason}; the run's sandbox is deleted by the next worker" if unexpected else reason))
        for stream in streams.values():
            stream.end()

    # -- end ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """The worker ends every run and deletes every sandbox, then exits (or is killed)."""
        if self.closed:
            return
        if self._spawning is not None and not self._spawning.done():
            with contextlib.suppress(Exception):
                await self._spawning
        self.closed = True
        proc, reader = self._proc, self._reader
        if proc is None:
            return
        if self.alive:
            try:
                await asyncio.wait_for(self.call("close", spawn=False), CLOSE_S)
            except (ExecutionError, ExecutorUnavailable, TimeoutError) as exc:
                log.warning("Daytona worker: close did not finish cleanly: %s", exc)
        if self._transport is not None:
            self._transport.close()  # its end of the pipe: the worker exits
        if reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(reader), EXIT_WAIT_S + 5)

    def abandon(self) -> None:
        """For an executor dropped without ``close``: its pipe closes, so the worker cleans up and exits."""
        self.closed = True
        transport = self._transport
        if transport is not None:
            with contextlib.suppress(RuntimeError):
                transport.close()


class RemoteRun:
    """A Daytona run in the worker, as the run layer sees it (``executors.base.Execution``)."""

    def __init__(self, link: WorkerLink, ident: int) -> None:
        self._link, self.ident, self.generation = link, ident, link.generation
        self.info: dict[str, str] = {}
        self.outlet: StreamIn[Chunk] = StreamIn(link, ident)
        self.exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.exit_code.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no log
        self._on_exit: Callable[[RemoteRun], None] | None = None

    async def output(self) -> AsyncIterator[Chunk]:
        async for batch in self.outlet.batches():
            # Joined per tick by the worker already; frames that queued up here are joined too.
            stream, parts = batch[0].stream, [batch[0].text]
            for chunk in batch[1:]:
                if chunk.stream != stream:
                    yield Chunk(stream, "".join(parts))
                    stream, parts = chunk.stream, []
                parts.append(chunk.text)
            yield Chunk(stream, "".join(parts))

    def exited(self, callback: Callable[[RemoteRun], None]) -> None:
        """``callback(self)`` on this loop once the exit is known, before ``wait`` returns it."""
        self._on_exit = callback
        self.exit_code.add_done_callback(self._over)

    def _over(self, _done: object = None) -> None:
        callback, self._on_exit = self._on_exit, None
        if callback is not None:
            callback(self)

    async def wait(self) -> int:
        try:
            return await asyncio.shield(self.exit_code)
        finally:
            # Done before this wait: awaiting it took no turn of the loop, so its callbacks
            # (``exited``'s among them) may still be queued. Run that one now, not after.
            if self.exit_code.done():
                self._over()

    async def cancel(self) -> None:
        """Ends the command and deletes the sandbox (in the worker); safe to call twice. A run
        of a worker that died is already over (its exit says why)."""
        if self.exit_code.done() or self.generation != self._link.generation:
            return
        with contextlib.suppress(ExecutorUnavailable):
            await self._link.call("cancel", spawn=False, i=self.ident)

    @classmethod
    async def start(cls, link: WorkerLink, spec: ExecSpec, grace: float) -> RemoteRun:
        await link.ensure()
        run = cls(link, link.next_id())
        link.streams[run.ident] = run.outlet
        link.exits[run.ident] = (run.exit_code, run.info)
        try:
            reply = await link.call("start", spawn=False, i=run.ident, spec=spec_out(spec), grace=grace)
        except asyncio.CancelledError:  # started (or not) as its caller went away: ended over there
            run.outlet.abandon()
            link.tell("cancel", i=run.ident)
            raise
        except BaseException:  # never started: nothing more will come for it
            link.streams.pop(run.ident, None)
            link.exits.pop(run.ident, None)
            raise
        run.info.update(reply["info"])
        return run


class RemotePty:
    """A terminal in the worker, with the surface of ``executors.pty.HostPty``."""

    def __init__(self, link: WorkerLink, ident: int) -> None:
        self._link, self.ident, self.generation = link, ident, link.generation
        self.info: dict[str, str] = {}
        self.outlet: StreamIn[bytes] = StreamIn(link, ident)
        self._reads = self.outlet.batches()
        self._over = False

    @classmethod
    async def open(cls, link: WorkerLink, spec: ExecSpec, cols: int, rows: int, shell: bool) -> RemotePty:
        await link.ensure()
        pty = cls(link, link.next_id())
        link.streams[pty.ident] = pty.outlet
        try:
            reply = await link.call("pty_open", spawn=False, i=pty.ident, spec=spec_out(spec), cols=cols, rows=rows,
                                    shell=shell)
        except asyncio.CancelledError:
            pty.outlet.abandon()
            link.tell("pty_close", i=pty.ident)
            raise
        except BaseException:
            link.streams.pop(pty.ident, None)
            raise
        pty.info.update(reply["info"])
        return pty

    def _current(self) -> bool:
        return self.generation == self._link.generation and self._link.alive

    async def read(self) -> bytes:
        if self._over:
            return b""
        batch = await anext(self._reads, None)
        if batch is None:
            self._over = True  # every later read sees the end too
            return b""
        return b"".join(batch)

    async def write(self, data: bytes) -> None:
        if self._current():
            with contextlib.suppress(ExecutorUnavailable):
                await self._link.call("pty_write", spawn=False, i=self.ident, data=b64(data))

    async def resize(self, cols: int, rows: int) -> None:
        if self._current():
            with contextlib.suppress(ExecutorUnavailable):
                await self._link.call("pty_resize", spawn=False, i=self.ident, cols=cols, rows=rows)

    async def wait(self) -> int | None:
        if not self._current():
            return None
        try:
            code = await self._link.call("pty_wait", spawn=False, i=self.ident)
        except ExecutorUnavailable:
            return None
        return None if code is None else int(code)

    async def close(self) -> None:
        if not self._current():
            return
        with contextlib.suppress(ExecutorUnavailable):
            reply = await self._link.call("pty_close", spawn=False, i=self.ident)
            self.info.update(reply["info"])
