"""Append-only, numbered event logs with live waiting.

Why readers poll the table instead of getting pushed copies: an event is committed before
anyone is told, so a reader that (re)connects with ``after=<seq>`` reads exactly what it
missed from the same table the live path uses. Live delivery is then only a wake-up. No
per-client queue exists, so a slow client cannot grow the service's memory.

A log is either *direct* (each append commits on the main connection, inside the caller's
transaction if there is one: the orchestration log, whose events share a transaction with the
state they announce) or *batched* (appends go to the event-writer thread, ``store.writer``:
the run logs, which carry every output chunk). A batched append returns its seq at once; the
row becomes visible, and readers are woken, only after the writer has committed it. Readers
therefore wait on the *committed* seq, never on the assigned one.

A batched log also keeps a bounded in-memory tail of each key's newest *committed* rows (filled
only after their commit, so the guarantee holds), from which live readers are served: with
dozens of SSE listeners every wake-up would otherwise be a SQLite query on the event loop. A
range the tail does not wholly cover is read from the table, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from typing import Any

from agent_manager.store.database import Database, dumps, now
from agent_manager.store.writer import Row

log = logging.getLogger("agent_manager.events")
MERGE_LIMIT = 256 * 1024  # characters of output text one coalesced event may grow to
DRAIN_TIMEOUT_S = 30.0
# How many logs' seq numbers are cached. Dropping one with nothing in flight is always safe
# (the table is the truth), so the cache is bounded rather than trusted to be forgotten.
LAST_SEQ_CACHE = 4096
# The tail of recently committed rows (see the module doc): bounded per key, in all and in keys.
RECENT_KEY_BYTES = 256 * 1024
RECENT_TOTAL_BYTES = 16 * 1024 * 1024
RECENT_KEYS = 1024
RECENT_ROW_OVERHEAD = 128  # bytes counted per row beyond its data (tuple, seq, type, time)
# The printed bytes of the newest committed file-backed output rows, as the writer thread encoded
# them for the run's file: a live reader (raw output, SSE) sends them from memory instead of
# reading back what was just written. Kept only after the commit, like the tail; bounded per key
# and in all (a reader further behind reads the file).
PRINTED_KEY_BYTES = 4 * 1024 * 1024
PRINTED_TOTAL_BYTES = 16 * 1024 * 1024

RawRow = tuple[int, str, str, str]  # (seq, type, stored data column, created_at)


class _Recent:
    """One key's newest committed rows, consecutive in seq (``rows[i][0] == rows[0][0] + i``)."""

    __slots__ = ("rows", "size")

    def __init__(self) -> None:
        self.rows: deque[RawRow] = deque()
        self.size = 0


class _Printed:
    """One key's newest printed bytes (``PRINTED_KEY_BYTES``): seq -> bytes, oldest first."""

    __slots__ = ("bodies", "size")

    def __init__(self) -> None:
        self.bodies: dict[int, bytes] = {}
        self.size = 0

    def drop_oldest(self) -> int:
        size = len(self.bodies.pop(next(iter(self.bodies))))
        self.size -= size
        return size


class EventLog:
    """One log per owner row, in ``table`` keyed by ``key_column`` (e.g. run_events.run_id)."""

    def __init__(self, db: Database, table: str, key_column: str, *, batched: bool = False,
                 spill: bool = False) -> None:
        self.db = db
        self.table = table
        self.key_column = key_column
        self.batched = batched
        # Large output text of a batched log goes to the key's file (``store.output_files``).
        self.files = db.output_files if spill and batched else None
        self._last: dict[str, int] = {}       # last seq handed out
        self._committed: dict[str, int] = {}  # last seq readers may see
        self._tail: dict[str, Row] = {}       # the newest queued row per key (may still grow)
        self._wakeups: dict[str, asyncio.Event] = {}
        self._recent: dict[str, _Recent] = {}  # insertion order = least recently written first
        self._recent_bytes = 0
        self._printed: dict[str, _Printed] = {}  # least recently written key first
        self._printed_bytes = 0
        self.closed = False

    def _stored_max(self, key: str) -> int:
        row = self.db.one(f"SELECT MAX(seq) AS s FROM {self.table} WHERE {self.key_column} = ?", (key,))
        return int(row["s"]) if row and row["s"] is not None else 0

    def last_seq(self, key: str) -> int:
        """The newest seq handed out (committed or still on its way to the table)."""
        if key not in self._last:
            self._trim()
            self._last[key] = self._committed[key] = self._stored_max(key)
        return self._last[key]

    def fresh(self, key: str) -> None:
        """``key`` was just created (its owner row is new): it has no rows, so its first append
        needs no ``MAX(seq)`` query."""
        if key not in self._last:
            self._trim()
            self._last[key] = self._committed[key] = 0

    def _trim(self) -> None:
        """Keep the caches bounded: forget the oldest logs that have no row in flight (a
        forgotten one is read back from the table when next used)."""
        if len(self._last) < LAST_SEQ_CACHE:
            return
        excess = len(self._last) - LAST_SEQ_CACHE * 3 // 4
        for key in [k for k in self._last if k not in self._tail][:excess]:
            self._last.pop(key, None)
            self._committed.pop(key, None)
            self._drop_recent(key)
            self._drop_printed(key)

    def close(self) -> None:
        """The service is stopping: wake every waiter and make ``wait`` return at once, so
        live readers (SSE streams) send what is stored and end."""
        self.closed = True
        for wakeup in self._wakeups.values():
            wakeup.set()
        self._wakeups.clear()

    def committed_seq(self, key: str) -> int:
        self.last_seq(key)
        return self._committed[key]

    def append(self, key: str, type_: str, data: dict[str, Any],
               also: list[tuple[str, tuple[Any, ...]]] | None = None, *, direct: bool = False) -> int:
        """Persist one event, then wake the readers of ``key``; returns its seq.

        ``also`` are statements committed in the same transaction, before the event. Direct logs
        commit before returning, and so does a batched one with ``direct=True`` when nothing of
        ``key`` is queued (no thread round trip: the end of a run wakes its DAG at once); else
        the row queues behind the others. An ``output`` event may be merged into the previous
        queued output event of the same stream, and then that event's seq is returned.
        """
        text = data.get("text")
        if isinstance(text, bytes):  # an output text's ASCII bytes as read (``Chunk.raw``)
            if not self.batched or (direct and key not in self._tail):
                data = {**data, "text": text.decode("ascii")}
        elif text is not None and not isinstance(text, str):
            text = str(text)
        if not self.batched or (direct and key not in self._tail):
            seq = self.last_seq(key) + 1
            with self.db.transaction() as conn:
                for statement, params in also or ():
                    conn.execute(statement, params)
                stored, at = dumps(data), now()
                conn.execute(f"INSERT INTO {self.table} ({self.key_column}, seq, type, data, created_at)"
                             " VALUES (?, ?, ?, ?, ?)", (key, seq, type_, stored, at))
            self._last[key] = self._committed[key] = seq
            if self.db.in_transaction():  # inside a caller's transaction: not committed yet
                self._drop_recent(key)
            else:
                self._remember(key, (seq, type_, stored, at))
            self._wake(key)
            return seq
        writer = self.db.writer()
        tail = self._tail.get(key)
        if (type_ == "output" and not also and tail is not None and tail.type == "output"
                and tail.data.get("stream") == data.get("stream") and tail.size < MERGE_LIMIT
                and writer.merge(tail, text or "")):
            return tail.seq
        seq = self.last_seq(key) + 1
        size = (len(text) if text is not None else 0) + 128
        row = Row(self.table, self.key_column, key, seq, type_, dict(data), now(), size, self._on_commit,
                  list(also or ()), self.files)
        writer.put(row)
        self._last[key] = seq
        self._tail[key] = row
        return seq

    def _on_commit(self, row: Row) -> None:
        """Called on the loop once the writer's transaction holding ``row`` has committed."""
        if self._tail.get(row.key) is row:
            del self._tail[row.key]
        if row.seq > self._committed.get(row.key, 0):
            self._committed[row.key] = row.seq
        if row.stored is not None and not self.closed:  # closed: a batch that failed at shutdown
            self._remember(row.key, (row.seq, row.type, row.stored, row.created_at))
            if row.printed is not None:
                self._keep_printed(row.key, row.seq, row.printed)
        else:
            self._drop_recent(row.key)
        row.printed = None
        self._wake(row.key)

    def _keep_printed(self, key: str, seq: int, body: bytes) -> None:
        if len(body) > PRINTED_KEY_BYTES:
            return
        pieces = self._printed.pop(key, None) or _Printed()  # re-inserted last: the most recently written key
        pieces.bodies[seq] = body
        pieces.size += len(body)
        self._printed_bytes += len(body)
        self._printed[key] = pieces
        while pieces.size > PRINTED_KEY_BYTES:
            self._printed_bytes -= pieces.drop_oldest()
        while self._printed_bytes > PRINTED_TOTAL_BYTES:
            oldest_key = next(iter(self._printed))
            oldest = self._printed[oldest_key]
            self._printed_bytes -= oldest.drop_oldest()
            if not oldest.bodies:
                del self._printed[oldest_key]

    def _drop_printed(self, key: str) -> None:
        pieces = self._printed.pop(key, None)
        if pieces is not None:
            self._printed_bytes -= pieces.size

    def printed(self, key: str, seq: int) -> bytes | None:
        """The printed bytes of committed file-backed output row ``seq`` when still in memory."""
        pieces = self._printed.get(key)
        return None if pieces is None else pieces.bodies.get(seq)

    def _remember(self, key: str, row: RawRow) -> None:
        """Add a just-committed row to the key's tail (a gap in seq starts the tail afresh)."""
        if not self.batched:
            return
        recent = self._recent.pop(key, None)  # re-inserted last: the most recently written key
        if recent is None or (recent.rows and recent.rows[-1][0] != row[0] - 1):
            if recent is not None:
                self._recent_bytes -= recent.size
            recent = _Recent()
        cost = len(row[2]) + RECENT_ROW_OVERHEAD
        if cost > RECENT_KEY_BYTES:  # one row larger than a tail: the table serves this key
            self._recent_bytes -= recent.size
            return
        recent.rows.append(row)
        recent.size += cost
        self._recent_bytes += cost
        while recent.size > RECENT_KEY_BYTES:
            dropped = len(recent.rows.popleft()[2]) + RECENT_ROW_OVERHEAD
            recent.size -= dropped
            self._recent_bytes -= dropped
        self._recent[key] = recent
        while self._recent_bytes > RECENT_TOTAL_BYTES or len(self._recent) > RECENT_KEYS:
            self._drop_recent(next(iter(self._recent)))

    def _drop_recent(self, key: str) -> None:
        recent = self._recent.pop(key, None)
        if recent is not None:
            self._recent_bytes -= recent.size

    def _from_recent(self, key: str, after: int, limit: int) -> list[RawRow] | None:
        """The committed rows after ``after`` from the tail, or None when the tail does not hold
        all of them (it must reach back to ``after`` and forward to the committed seq)."""
        recent = self._recent.get(key)
        if recent is None or not recent.rows:
            return None
        rows = recent.rows
        first, last = rows[0][0], rows[-1][0]
        if after < first - 1 or last != self._committed.get(key):
            return None
        if after >= last:
            return []
        start = after - first + 1
        return list(itertools.islice(rows, start, start + limit))

    def _wake(self, key: str) -> None:
        wakeup = self._wakeups.pop(key, None)
        if wakeup is not None:
            wakeup.set()

    async def room(self) -> None:
        """For producers: wait while the writer holds too many uncommitted bytes."""
        if self.batched:
            await self.db.writer().room()

    async def drained(self, key: str) -> None:
        """Until every event appended to ``key`` so far is committed (bounded, for shutdown safety)."""
        target = self.last_seq(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self.committed_seq(key) < target:
            left = deadline - loop.time()
            if left <= 0:
                log.error("events of %s not committed after %.0fs", key, DRAIN_TIMEOUT_S)
                return
            await self.wait(key, self.committed_seq(key), left)

    def read(self, key: str, after: int = 0, limit: int = 64, live: bool = False) -> list[dict[str, Any]]:
        """The rows after ``after``, decoded, from the table: a caller that saw the owner end in
        the database (a run's status) must see every row committed with that end, and the loop
        may not have heard of that commit yet (the memory tail and ``_committed`` lag it until
        then). ``live``: a follower that waits on this log (``wait``) reads what it announced,
        from memory where it can (a DAG hop's wait for its step's start)."""
        return [{"seq": seq, "type": type_, "data": json.loads(self._expand(key, data)), "created_at": at}
                for seq, type_, data, at in self.read_raw(key, after, limit, table=not live)]

    def read_raw(self, key: str, after: int = 0, limit: int = 64, table: bool = False) -> list[RawRow]:
        """(seq, type, stored data column, created_at) without decoding: the SSE path sends the text
        as is, and reads a file-backed output text as bytes (``frame_data``). Served from the
        tail of committed rows when it holds the whole range, else (or with ``table``) from the table."""
        if not table:
            if self.batched and after >= self._committed.get(key, after + 1):
                return []  # nothing committed after it (a row the writer has not announced waits for its wake-up)
            cached = self._from_recent(key, after, limit)
            if cached is not None:
                return cached
        rows = self.db.all(f"SELECT seq, type, data, created_at FROM {self.table}"
                           f" WHERE {self.key_column} = ? AND seq > ? ORDER BY seq LIMIT ?", (key, after, limit))
        return [(r["seq"], r["type"], r["data"], r["created_at"]) for r in rows]

    def recent(self, key: str, after: int, limit: int) -> list[RawRow] | None:
        """The committed rows after ``after`` from memory ([] at the committed end), or None when
        only the table has them all."""
        if self.batched and after >= self._committed.get(key, after + 1):
            return []
        return self._from_recent(key, after, limit)

    def stored_after(self, key: str, after: int) -> bool:
        """Whether the table holds a row of ``key`` newer than ``after`` (asked of the table, not
        the caches: with the owner's end read first, a False means none will ever come)."""
        return self.db.one(f"SELECT 1 AS x FROM {self.table} WHERE {self.key_column} = ? AND seq > ? LIMIT 1",
                           (key, after)) is not None

    def _expand(self, key: str, data: str) -> str:
        return data if self.files is None else self.files.expand(key, data)

    def frame_data(self, key: str, data: str, at: str, seq: int | None = None) -> list[bytes] | None:
        """A file-backed row's SSE payload as bytes, ``at`` included (None: an inline row); the
        printed bytes of row ``seq`` come from memory while they are there."""
        if self.files is None:
            return None
        return self.files.frame(key, data, at, None if seq is None else self.printed(key, seq))

    async def wait(self, key: str, after: int, timeout: float) -> bool:
        """Wait until a committed event newer than ``after`` exists; False on timeout."""
        if self.committed_seq(key) > after:
            return True
        if self.closed:
            return False
        wakeup = self._wakeups.setdefault(key, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for (one per SSE wake-up)
                await wakeup.wait()
        except TimeoutError:
            return self.committed_seq(key) > after
        return True

    def forget(self, key: str) -> None:
        """Drop cached state of a finished log (its rows stay); kept while rows are in flight."""
        if key in self._tail:
            return
        self._last.pop(key, None)
        self._committed.pop(key, None)
        self._drop_recent(key)
        self._drop_printed(key)
