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

import json
from collections.abc import AsyncIterator, Iterator

from fastapi.responses import StreamingResponse

from agent_manager.events import EventLog
from agent_manager.models import TERMINAL_STATUSES
from agent_manager.store.database import Database
from agent_manager.store.output_files import FIELD, reference

ROWS = 256  # rows per query; only output rows and the end are selected
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


class _Sender:
    """What is waiting to be sent: small pieces to join, or one range of the run's file that
    consecutive file-backed rows extend (they are contiguous while one stream writes fast), so
    a fast writer's output goes out in 1 MiB reads and writes rather than one per event."""

    def __init__(self, log: EventLog, key: str, offset: int) -> None:
        self.log = log
        self.key = key
        self.skip = _Skip(offset)
        self.small: list[bytes] = []
        self.size = 0
        self.range: tuple[int, int] | None = None  # (offset, length) in the file, raw format

    def add_row(self, data: str, stream: str | None) -> Iterator[bytes]:
        """Take one stored output row; yields what is ready to be sent."""
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
        if field == FIELD and not self.skip.count:
            if self.range is not None and sum(self.range) == offset:
                self.range = (self.range[0], self.range[1] + length)
                return
            yield from self.flush()
            self.range = (offset, length)
            return
        yield from self.flush()
        assert self.log.files is not None
        for piece in self.log.files.raw(self.key, field, offset, length):
            if piece := self.skip.cut(piece):
                yield piece

    def _flush_small(self) -> Iterator[bytes]:
        if self.small:
            yield b"".join(self.small)
            self.small, self.size = [], 0

    def _flush_range(self) -> Iterator[bytes]:
        if self.range is not None and self.log.files is not None:
            (offset, length), self.range = self.range, None
            yield from self.log.files.raw(self.key, FIELD, offset, length)

    def flush(self) -> Iterator[bytes]:
        yield from self._flush_small()
        yield from self._flush_range()


async def chunks(db: Database, log: EventLog, run_id: str, after: int, stream: str | None,
                 offset: int) -> AsyncIterator[bytes]:
    sender = _Sender(log, run_id, offset)
    while True:
        seen = log.committed_seq(run_id)  # every row up to here is visible to the query below
        rows = db.all(f"SELECT seq, type, data FROM {log.table} WHERE {log.key_column} = ? AND seq > ?"
                      " AND type IN ('output', 'run.finished') ORDER BY seq LIMIT ?", (run_id, after, ROWS))
        for row in rows:
            after = row["seq"]
            if row["type"] == "run.finished":
                for piece in sender.flush():
                    yield piece
                return
            for piece in sender.add_row(row["data"], stream):
                yield piece
        if len(rows) == ROWS:
            continue
        after = max(after, seen)  # the other events up to ``seen`` are not ours: do not wake for them
        for piece in sender.flush():  # all that is stored has gone out before we wait
            yield piece
        if log.closed:  # the service is stopping: what was stored has been sent
            return
        if not await log.wait(run_id, after, IDLE_CHECK_S):
            status = db.one("SELECT status FROM runs WHERE id = ?", (run_id,))
            if status is None or status["status"] in TERMINAL_STATUSES:  # ended without run.finished (or pruned)
                if log.committed_seq(run_id) <= after:
                    return


def response(db: Database, log: EventLog, run_id: str, after: int, stream: str | None,
             offset: int) -> StreamingResponse:
    """The caller has checked that ``run_id`` is a stored run the principal may read."""
    return StreamingResponse(chunks(db, log, run_id, after, stream, offset), media_type="text/plain; charset=utf-8",
                             headers=HEADERS)
