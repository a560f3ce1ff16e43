"""A child's stdout and stderr pipes, read on the event loop into one pending buffer.

Why not asyncio's subprocess streams: for every read they hop through ``call_soon`` into a
``StreamReader`` (two copies of the bytes), wake one reader task per stream, which decodes
and puts a chunk into a queue, which wakes the run's consumer: three task steps and a
handle per read. Under 200 chatty runs that machinery was a third of the loop's time. Here
the loop calls ``_readable`` when a pipe has bytes; it reads them (one copy), decodes them
and appends them to the pending list, and wakes the consumer if it waits. ASCII bytes (nearly
all output, and all of a fast writer's log) with nothing held in the decoder are kept as they
are, not decoded: the service stores and sends them as bytes (``Chunk.raw``). The consumer takes
everything pending at once (``take``), consecutive pieces of one stream joined, in arrival
order: a busy loop naturally yields fewer, larger chunks, with no delay added.

Many chatty processes at once: each line would be its own chunk, event, commit and SSE frame,
and 200 runs printing a line every 10 ms kept the loop so busy that an API request waited
100 ms. So once woken, a consumer lingers a moment before taking, ``LINGER_PER_READER_S`` per
process being read, at most ``LINGER_MAX_S``: the service's event rate stays near
1 / ``LINGER_PER_READER_S`` however many runs speak, at the price of a few milliseconds of
latency per line, and only when many run at once (a single run never lingers).

Memory stays bounded: once more than ``PENDING_LIMIT`` bytes wait for the consumer, a pipe
that delivers more stops being read (its writer blocks in ``write``, as with a full pipe)
until the consumer has taken what is pending. A producer faster than the disk waits; the
service does not grow.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

from agent_manager.executors.base import Chunk
from agent_manager.models import Stream

PIPE_SIZE = 1024 * 1024  # a fast writer's output pipe (Linux's default pipe-max-size)
# What one read of a widened pipe takes: all of its 1 MiB. A read becomes one output event, so a
# fast writer's events are up to 1 MiB. 256 KiB reads were tried (1 MiB events had made SSE replay
# slower in an earlier round); with ASCII kept as bytes and live readers served from memory, 1 MiB
# took 15 % less of the loop's CPU and 40 % less of the writer's per 200 MB, raw live over curl
# 730-970 MB/s against 630-740, and SSE live and replay the same (three pairs, issue-15h notes).
READ_SIZE = 1024 * 1024
DEFAULT_PIPE_SIZE = 65536
F_SETPIPE_SZ = 1031
PENDING_LIMIT = 1024 * 1024  # bytes read but not yet taken, beyond which the pipes are not read
CHUNK_LIMIT = 256 * 1024  # characters one taken chunk may grow to by joining pieces
MAX_BEHIND_S = 60.0  # how long a consumer behind the pipes may stretch an end-of-stream wait
LINGER_PER_READER_S = 0.0002  # a consumer's linger, per process whose output is being read
LINGER_MIN_S = 0.002  # shorter lingers are not worth their timer: no linger (fewer than 10 processes)
LINGER_MAX_S = 0.05  # a line waits at most this long for company (200 or more processes)
_READING: weakref.WeakSet[OutputPipes] = weakref.WeakSet()  # processes whose output is being read


def widen(fd: int) -> bool:
    """Give an output pipe a 1 MiB buffer: a fast writer then wakes the loop once per 256 KiB
    instead of once per 64 KiB (a pipe's default size). Done only once a read came back full
    (a fast writer): pipe memory counts against the user's pipe-user-pages-soft, past which
    Linux gives every new pipe of that user a single page. Best effort: a limit keeps 64 KiB."""
    try:
        return fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE) >= PIPE_SIZE
    except OSError:
        return False


@dataclass(eq=False)
class _Pipe:
    fd: int
    stream: Stream
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    widened: bool = False
    read_size: int = DEFAULT_PIPE_SIZE  # what one read asks for: the pipe's size, a full pipe in one read
    reading: bool = False
    open: bool = True


def linger_s() -> float:
    """How long a woken consumer waits before taking, given how many processes are read now."""
    linger = min(LINGER_MAX_S, len(_READING) * LINGER_PER_READER_S)
    return linger if linger >= LINGER_MIN_S else 0.0


def _chunk(stream: Stream, parts: list[str | bytes]) -> Chunk:
    """One run of pieces as a chunk (``add`` keeps a run's pieces of one type)."""
    if len(parts) == 1:
        first = parts[0]
        return Chunk(stream, raw=first) if isinstance(first, bytes) else Chunk(stream, first)
    if isinstance(parts[0], bytes):
        return Chunk(stream, raw=b"".join(cast("list[bytes]", parts)))
    return Chunk(stream, "".join(cast("list[str]", parts)))


class OutputPipes:
    """The read ends of one process's output pipes (``fds``: stream → fd, owned from now on)."""

    def __init__(self, fds: dict[Stream, int], limit: int = PENDING_LIMIT) -> None:
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        self._pipes = [_Pipe(fd, stream) for stream, fd in fds.items()]
        self._streams: list[Stream] = []  # one entry per run of pieces of one stream, in arrival order
        self._pieces: list[list[str | bytes]] = []  # a run's pieces are all text or all ASCII bytes
        self._sizes: list[int] = []  # characters of each run
        self.pending_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._paused_total = 0.0
        self._paused_at: float | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()  # every pipe at EOF (or closed)
        for pipe in self._pipes:
            os.set_blocking(pipe.fd, False)
            self._resume(pipe)
        if self._pipes:
            _READING.add(self)
        else:
            self.closed.set_result(None)

    # -- the loop's side: bytes arrive --------------------------------------------------------

    def _readable(self, pipe: _Pipe) -> None:
        try:
            data = os.read(pipe.fd, pipe.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO and the like: the pipe is as good as closed
            data = b""
        if not data:
            self._close(pipe)
            return
        if not pipe.widened and len(data) >= DEFAULT_PIPE_SIZE:
            pipe.widened = True
            if widen(pipe.fd):
                pipe.read_size = READ_SIZE
        if data.isascii() and not pipe.decoder.getstate()[0]:  # no character half-read: bytes are text
            self.add(pipe.stream, data)
        elif text := pipe.decoder.decode(data):
            self.add(pipe.stream, text)
        self.pending_bytes += len(data)
        if self.pending_bytes > self._limit:
            self._pause(pipe)

    def add(self, stream: Stream, text: str | bytes) -> None:
        """Append ``text`` (or ASCII bytes) to what is pending (also the service's own notes) and
        wake the consumer."""
        if (self._streams and self._streams[-1] == stream and self._sizes[-1] < CHUNK_LIMIT
                and type(self._pieces[-1][0]) is type(text)):
            self._pieces[-1].append(text)  # the same type as the run's first piece
            self._sizes[-1] += len(text)
        else:
            self._streams.append(stream)
            self._pieces.append([text])
            self._sizes.append(len(text))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _pause(self, pipe: _Pipe) -> None:
        if pipe.reading:
            pipe.reading = False
            self._loop.remove_reader(pipe.fd)
            if self._paused_at is None:
                self._paused_at = self._loop.time()

    def _resume(self, pipe: _Pipe) -> None:
        if pipe.open and not pipe.reading:
            pipe.reading = True
            self._loop.add_reader(pipe.fd, self._readable, pipe)

    def _close(self, pipe: _Pipe) -> None:
        """EOF (or abandoned): flush the decoder, release the fd, and tell ``closed`` when all are."""
        if not pipe.open:
            return
        if pipe.reading:
            self._loop.remove_reader(pipe.fd)
        pipe.reading = pipe.open = False
        with contextlib.suppress(OSError):
            os.close(pipe.fd)
        if text := pipe.decoder.decode(b"", final=True):
            self.add(pipe.stream, text)
        if not any(p.open for p in self._pipes):
            _READING.discard(self)
            self._unpaused()
            if not self.closed.done():
                self.closed.set_result(None)
            self._wake()

    def _unpaused(self) -> None:
        if self._paused_at is not None:
            self._paused_total += self._loop.time() - self._paused_at
            self._paused_at = None

    # -- the consumer's side -------------------------------------------------------------------

    def take(self) -> list[Chunk]:
        """Everything pending, as chunks in arrival order; reading resumes."""
        chunks = [_chunk(stream, parts) for stream, parts in zip(self._streams, self._pieces, strict=True)]
        self._streams, self._pieces, self._sizes = [], [], []
        self.pending_bytes = 0
        if self._paused_at is not None:
            self._unpaused()
            for pipe in self._pipes:
                self._resume(pipe)
        return chunks

    async def chunks(self) -> list[Chunk]:
        """The next pending chunks, waiting for some; [] once ``end`` was called and all is taken."""
        while not self._streams:
            if self._ended:
                return []
            if self._waiter is None or self._waiter.done():
                self._waiter = self._loop.create_future()
            await self._waiter  # a cancelled consumer cancels only this waiter
        if (linger := linger_s()) and not self.closed.done():
            await asyncio.sleep(linger)  # what arrives meanwhile joins this take (see the module's doc)
        return self.take()

    def paused_s(self) -> float:
        """Seconds the pipes went unread because the consumer was behind (so far)."""
        return self._paused_total + (self._loop.time() - self._paused_at if self._paused_at is not None else 0.0)

    async def wait_closed(self, seconds: float, also: asyncio.Future[Any] | None = None) -> bool:
        """Whether every pipe reaches EOF within ``seconds`` of reading (or ``also`` is done
        first: then False at once). Time spent paused does not count, up to ``MAX_BEHIND_S``:
        a consumer behind the pipes is not a process holding them open."""
        started = self.paused_s()
        deadline = self._loop.time() + seconds
        while not self.closed.done():
            left = deadline + min(self.paused_s() - started, MAX_BEHIND_S) - self._loop.time()
            if left <= 0:
                return False
            waiting: list[asyncio.Future[Any]] = [self.closed]
            if also is not None:
                waiting.append(also)
            await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if also is not None and also.done() and not self.closed.done():
                return False
        return True

    def abandon(self) -> None:
        """Stop reading: close our ends of the pipes that are still open (something we cannot
        find holds them). What was read stays pending."""
        for pipe in self._pipes:
            self._close(pipe)

    def end(self) -> None:
        """No more output will come: the consumer ends once it has taken what is pending."""
        self._ended = True
        self._wake()
