"""GET /api/runs/{id}/output: a run's output as the bytes the agent printed (``curl`` a log).

Why beside SSE: the event stream wraps every chunk in JSON, which both ends must escape and
parse. A reader that only wants the text (a terminal, ``curl | grep``, a log shipper) gets it
here as ``text/plain`` with no framing. A file-backed chunk (``store.output_files``) is sent
straight from the run's file in pieces of at most 1 MiB, so a 200 MB log costs one piece of
memory per reader; the HTTP transport's flow control paces the file reads.

The body is the run's stored ``output`` events in event order (stdout and stderr interleaved
as they arrived, or one of them with ``?stream=``), so it honours ``max_stored_output_mb``
exactly as the event log does: what was not stored is not sent, and the stored note
"[agent-manager: output truncated ...]" is (on stderr). A live run is followed until its
``run.finished``; then the response ends. ``?after=<seq>`` starts after an event (as on the
event stream) and ``?offset=<n>`` skips the first ``n`` bytes of what would be sent, so an
interrupted download resumes with the byte count it already has.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from agent_manager.events import EventLog
from agent_manager.models import TERMINAL_STATUSES
from agent_manager.store import output_files
from agent_manager.store.database import Database
from agent_manager.store.output_files import FIELD, reference

ROWS = 256  # rows per read; only output rows and the end are sent
WANTED = ("output", "run.finished")
SEND_BYTES = 256 * 1024  # small inline chunks are joined up to this before a write
IDLE_CHECK_S = 15.0  # how often a silent live run's status is looked at
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}


class _Skip:
    """The ``?offset=`` bytes still to drop."""

    def __init__(self, count: int) -> None:
        self.count = count

    def cut(self, piece: bytes) -> bytes:
        if not self.count:
            return piece
        if len(piece) <= self.count:
            self.count -= len(piece)
            return b""
        piece, self.count = piece[self.count:], 0
        return piece


@dataclass(frozen=True)
class _Range:
    """A part of the run's file to send; ``_Sender.read`` reads it (the ``?offset=`` bytes still
    to skip are cut from what it reads)."""

    field: str
    offset: int
    length: int


class _Sender:
    """What is waiting to be sent: small pieces to join, or one range of the run's file that
    consecutive file-backed rows extend (they are contiguous while one stream writes fast), so
    a replay goes out in 1 MiB reads and writes rather than one per event. A live reader near
    the end gets a file-backed row's bytes from memory (``EventLog.printed``: what the writer
    just wrote), with no read of the file."""

    def __init__(self, log: EventLog, key: str, offset: int) -> None:
        self.log = log
        self.key = key
        self.skip = _Skip(offset)
        self.small: list[bytes] = []
        self.size = 0
        self.range: tuple[int, int] | None = None  # (offset, length) in the file, raw format
        self.fd: int | None = None  # the run's file, open while rows are being sent

    def add_row(self, seq: int, data: str, stream: str | None) -> Iterator[bytes | _Range]:
        """Take one stored output row; yields what is ready to be sent (bytes, or a part of the
        file to read and send)."""
        found = reference(data) if self.log.files is not None else None
        if found is None:
            obj = json.loads(data)
            if stream is None or obj.get("stream") == stream:
                text = obj.get("text")
                if isinstance(text, str) and (piece := self.skip.cut(text.encode("utf-8", "replace"))):
                    yield from self._flush_range()
                    self.small.append(piece)
                    self.size += len(piece)
                    if self.size >= SEND_BYTES:
                        yield from self._flush_small()
            return
        obj, field, offset, length = found
        if stream is not None and obj.get("stream") != stream:
            return
        if field == FIELD and self.skip.count >= length:  # skipped without reading the file
            self.skip.count -= length
            return
        printed = self.log.printed(self.key, seq) if field == FIELD else None
        if printed is not None and len(printed) == length:
            yield from self.flush()
            if piece := self.skip.cut(printed):
                yield piece
            return
        if field == FIELD and not self.skip.count:
            if self.range is not None and sum(self.range) == offset:
                self.range = (self.range[0], self.range[1] + length)
                return
            yield from self.flush()
            self.range = (offset, length)
            return
        yield from self.flush()
        yield _Range(field, offset, length)

    async def read(self, part: _Range) -> AsyncIterator[bytes]:
        """The bytes of ``part``, in pieces of at most 1 MiB, ``?offset=`` applied. A part further
        behind the file's end than the writer keeps in the page cache (``DROP_LAG``: a replay,
        or a reader far behind) may have to come from the disk: it is read on a thread, so the
        event loop never waits for the disk."""
        files = self.log.files
        assert files is not None
        if self.fd is None:
            self.fd = files.open(self.key)
            if self.fd is None:
                return
        pieces = files.raw(self.key, part.field, part.offset, part.length, self.fd)
        far = part.offset < os.fstat(self.fd).st_size - output_files.DROP_LAG
        loop = asyncio.get_running_loop()
        while True:
            if far:
                pending = loop.run_in_executor(output_files.read_pool(), next, pieces, None)
                try:
                    piece = await asyncio.shield(pending)
                except asyncio.CancelledError:
                    await asyncio.wait([pending])  # the fd stays open until the thread is done with it
                    raise
            else:
                piece = next(pieces, None)
            if piece is None:
                return
            if piece := self.skip.cut(piece):
                yield piece

    def _flush_small(self) -> Iterator[bytes]:
        if self.small:
            yield self.small[0] if len(self.small) == 1 else b"".join(self.small)
            self.small, self.size = [], 0

    def _flush_range(self) -> Iterator[_Range]:
        if self.range is not None:
            (offset, length), self.range = self.range, None
            yield _Range(FIELD, offset, length)

    def flush(self) -> Iterator[bytes | _Range]:
        yield from self._flush_small()
        yield from self._flush_range()

    def close(self) -> None:
        """Close the run's file (before waiting for more, and at the end)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _rows(db: Database, log: EventLog, run_id: str, after: int) -> tuple[list[tuple[int, str, str]], int, bool]:
    """The next committed output rows and run.finished after ``after``: (rows, the last seq
    looked at, whether more may follow at once). From the log's tail of committed rows when
    it holds them (a live reader: no query), else from the table (output rows only)."""
    recent = log.recent(run_id, after, ROWS)
    if recent is not None:
        rows = [(seq, type_, data) for seq, type_, data, _at in recent if type_ in WANTED]
        return rows, recent[-1][0] if recent else after, len(recent) == ROWS
    found = db.all(f"SELECT seq, type, data FROM {log.table} WHERE {log.key_column} = ? AND seq > ?"
                   " AND type IN ('output', 'run.finished') ORDER BY seq LIMIT ?", (run_id, after, ROWS))
    return ([(row["seq"], row["type"], row["data"]) for row in found], found[-1]["seq"] if found else after,
            len(found) == ROWS)


async def chunks(db: Database, log: EventLog, run_id: str, after: int, stream: str | None,
                 offset: int) -> AsyncIterator[bytes]:
    sender = _Sender(log, run_id, offset)
    try:
        while True:
            seen = log.committed_seq(run_id)  # every row up to here is visible to the reads below
            rows, after, more = _rows(db, log, run_id, after)
            for seq, type_, data in rows:
                if type_ == "run.finished":
                    async for piece in _sent(sender, sender.flush()):
                        yield piece
                    return
                async for piece in _sent(sender, sender.add_row(seq, data, stream)):
                    yield piece
            if more:
                continue
            after = max(after, seen)  # the other events up to ``seen`` are not ours: do not wake for them
            async for piece in _sent(sender, sender.flush()):  # all that is stored has gone out before we wait
                yield piece
            sender.close()
            if log.closed:  # the service is stopping: what was stored has been sent
                return
            if not await log.wait(run_id, after, IDLE_CHECK_S):
                status = db.one("SELECT status FROM runs WHERE id = ?", (run_id,))
                if status is None or status["status"] in TERMINAL_STATUSES:  # ended without run.finished (or pruned)
                    if log.committed_seq(run_id) <= after:
                        return
    finally:
        sender.close()


async def _sent(sender: _Sender, items: Iterator[bytes | _Range]) -> AsyncIterator[bytes]:
    for item in items:
        if isinstance(item, bytes):
            yield item
        else:
            async for piece in sender.read(item):
                yield piece


def response(db: Database, log: EventLog, run_id: str, after: int, stream: str | None,
             offset: int) -> StreamingResponse:
    """The caller has checked that ``run_id`` is a stored run the principal may read."""
    return StreamingResponse(chunks(db, log, run_id, after, stream, offset), media_type="text/plain; charset=utf-8",
                             headers=HEADERS)
