"""The event writer: one thread, one connection, one transaction per batch of event rows.

Why a thread: a commit per output chunk on the event loop was the service's main cost under
load (every API request waited behind SQLite). Rows are queued by the loop and the thread
writes whatever has accumulated in a single transaction, so a fast producer costs one commit
per batch, not per event, and SQLite's own work runs beside the loop (the sqlite3 module
releases the GIL while SQLite works).

The guarantee does not change: nobody hears of a row before its transaction has committed.
Readers only read the table, and the thread announces a batch to the loop
(``call_soon_threadsafe``) after its COMMIT; ``EventLog`` then wakes the readers.

While a row waits in the queue its text may still grow (``merge``): consecutive output chunks
of one run become one event. That happens only while the thread is busy with the previous
batch, so an idle service adds no delay, and a busy one at most one batch's commit time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_manager.store.database import connect, dumps
from agent_manager.store.output_files import FIELD, Appender, OutputFiles
from agent_manager.text import unicode_only

if TYPE_CHECKING:
    from agent_manager.store.database import Database

log = logging.getLogger("agent_manager.store")
MAX_BATCH_ROWS = 4096
MAX_BATCH_BYTES = 2 * 1024 * 1024  # bounds one transaction (and the delay a merged chunk sees)
PENDING_LIMIT_BYTES = 16 * 1024 * 1024  # producers wait (``room``) beyond this many uncommitted bytes
STEP_ROWS = 512  # inserts between two looks at whether someone waits for the write lock
CHECKPOINT_BYTES = 4 * 1024 * 1024  # checkpoint once the WAL took about this much (SQLite's 1000 pages)
COMMIT_BYTES = 4096  # what a commit adds to the WAL at the least: one whole page (small ones add 3-4)
RESTART_FRAMES = 4096  # a WAL this long (16 MB of 4 KiB pages) is made to start over (``_checkpoint``)
CHECKPOINT_S = 5.0  # and at least this often while anything is written (the loop's commits too)
RETRY_S = 0.5


@dataclass(eq=False)
class Row:
    """One event row on its way to the table; ``text`` of an output row may grow until taken."""

    table: str
    key_column: str
    key: str
    seq: int
    type: str
    data: dict[str, Any]
    created_at: str
    size: int
    on_commit: Callable[[Row], None]
    also: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)  # same transaction, before the row
    files: OutputFiles | None = None  # where a large output text goes (``output_files``)
    insert: bool = True  # False: only the ``also`` statements (``put_statements``)
    taken: bool = False
    stored: str | None = None  # the ``data`` column as written (set by the thread; ``EventLog``'s tail)
    printed: bytes | None = None  # the text's bytes as written to the run's file (``EventLog.printed``)


def _ignore(row: Row) -> None:
    """Nobody waits for a ``put_statements`` row."""


class EventWriter:
    def __init__(self, db: Database, loop: asyncio.AbstractEventLoop) -> None:
        self.db = db
        self.loop = loop
        self.pending_bytes = 0
        self.commits = 0
        self.rows_written = 0
        self._conn = connect(db.path)
        self._conn.execute("PRAGMA wal_autocheckpoint=0")  # ``_checkpoint`` does it, outside the write lock
        self._lock = threading.Lock()  # taken directly on the loop's hot path (``put``, ``merge``)
        self._cond = threading.Condition(self._lock)
        self._queue: list[Row] = []
        self._closing = False
        self._idle = False  # the thread waits for rows (under ``_cond``)
        self._wake_due = False  # a wake-up of the idle thread is scheduled on the loop
        self._done = 0  # rows of the current batch already committed (``_commit``)
        self._logged = 0  # about how many bytes this thread's commits added to the WAL since the last checkpoint
        self._room = asyncio.Event()
        self._room.set()
        self._thread = threading.Thread(target=self._main, name="am-db-writer", daemon=True)
        self._thread.start()

    # -- the loop's side ---------------------------------------------------------------------

    def put(self, row: Row) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("the event writer is closed")
            self._queue.append(row)
            self.pending_bytes += row.size
            if not self._idle or self._wake_due:
                return  # a busy thread takes it with its next batch
            self._wake_due = True
        # Wake the idle thread once, after this step of the loop: the rows the same step
        # appends (many runs' output chunks) go in one batch, and a wake-up (a GIL hand-over
        # to the thread) costs one per step, not one per row.
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self.loop:
            self.loop.call_soon(self._wake)
        else:
            self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._wake_due = False
            self._cond.notify()

    def put_statements(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Statements with no event, committed in the next batch (work that may lag a little
        but should not run on the loop, e.g. indexing a finished run's answer)."""
        size = sum(len(str(p)) for _, params in statements for p in params) + 128
        self.put(Row("", "", "", 0, "", {}, "", size, _ignore, list(statements), insert=False))

    def merge(self, row: Row, text: str | bytes) -> bool:
        """Append ``text`` (or ASCII bytes) to a queued output row; False once the thread has taken it."""
        with self._lock:
            if row.taken:
                return False
            old = row.data["text"]
            if type(old) is not type(text):  # ASCII bytes beside text: both become text
                old = old.decode("ascii") if isinstance(old, bytes) else old
                text = text.decode("ascii") if isinstance(text, bytes) else text
            row.data["text"] = old + text
            row.size += len(text)
            self.pending_bytes += len(text)
            return True

    def full(self) -> bool:
        """Whether a producer should wait (``room``): cheaper than awaiting it for every chunk."""
        return self.pending_bytes > PENDING_LIMIT_BYTES

    async def room(self) -> None:
        """Wait while too many bytes are uncommitted (a producer faster than the disk)."""
        while self.pending_bytes > PENDING_LIMIT_BYTES:
            self._room.clear()
            await self._room.wait()

    def _announce(self, batch: list[Row]) -> None:
        for row in batch:
            row.on_commit(row)
        if self.pending_bytes <= PENDING_LIMIT_BYTES:
            self._room.set()

    def close(self) -> None:
        """Write everything still queued, then stop the thread (from the loop, at shutdown)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- the thread --------------------------------------------------------------------------

    def _main(self) -> None:
        last_checkpoint = time.monotonic()
        loop_mark = self.db.commits
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._idle = True
                        woken = self._cond.wait(CHECKPOINT_S)
                        self._idle = False
                        if not woken:
                            break
                    if not self._queue and self._closing:
                        return
                    busy = bool(self._queue)
                if busy:
                    self._write_next()
                loop_commits = self.db.commits  # read without a lock: an estimate is enough
                logged = self._logged + COMMIT_BYTES * (loop_commits - loop_mark)
                if logged and (logged >= CHECKPOINT_BYTES or time.monotonic() - last_checkpoint >= CHECKPOINT_S):
                    if not busy and self.db.output_files is not None:
                        self.db.output_files.sync()  # why only when idle: ``_checkpoint``
                    self._checkpoint()
                    last_checkpoint, self._logged, loop_mark = time.monotonic(), 0, loop_commits
        finally:
            self._conn.close()

    def _checkpoint(self) -> None:
        """Catch the WAL up, outside every lock: the loop's transactions and ``put`` go on
        meanwhile. No connection checkpoints on its own (``wal_autocheckpoint=0``): SQLite's
        automatic one runs inside the COMMIT that crosses its threshold (1000 pages), fsync and
        all, and while readers keep the WAL from being reset, in every COMMIT after; under load
        that held the write lock (and the loop's short transactions behind it) 20-30 ms a batch.
        Here it runs between batches once the WAL took about as much (``CHECKPOINT_BYTES``:
        what the rows weighed, and a few pages for each commit, the loop's included), and at
        least every ``CHECKPOINT_S`` while anything is written. An idle writer flushes the output
        files its rows refer to first; a busy one does not (nor did SQLite's own checkpoint):
        a checkpoint's fsync in the middle of a fast writer's run halved its speed (raw output
        over curl 400 MB/s against 800-900, ``--cases throughput``), and the kernel writes
        those bytes back anyway.

        A checkpoint beside writers may not let the WAL start over: SQLite rewinds it only when
        a write begins with every frame copied, and under load the loop had always written
        something meanwhile (the WAL grew by 16 KB a commit for good). So once it holds more
        than ``RESTART_FRAMES``, the writer looks, holding the write lock for a moment, whether
        the loop committed anything since the checkpoint began; if not, every frame is copied
        and the next write starts the WAL over. If so, it copies again, up to three times, then
        copies the rest holding the lock (its fsyncs included: 40-55 ms under the scale bench's
        200 chatty runs, which is why that is the last resort)."""
        with contextlib.suppress(sqlite3.Error):
            mark = self.db.commits
            row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if row is None or row[1] <= RESTART_FRAMES:
                return
            for last in (False, False, True):
                with self.db.write_lock:
                    if self.db.commits == mark:
                        return  # every frame is copied: the next write starts the WAL over
                    if last:
                        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        return
                    mark = self.db.commits
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _write_next(self) -> None:
        batch = self._take()
        appender: Appender | None = None
        try:
            # Encoding and file appends happen before the write lock: the loop's own short
            # transactions never wait behind them.
            params, appender = self._prepare(batch)
            self._done = 0
            replaced = False  # lone surrogates already stored as U+FFFD once
            for attempt in range(1, 1_000_000):
                try:
                    with self.db.write_lock:
                        self._commit(batch, params)
                    break
                except UnicodeEncodeError as exc:
                    # A lone surrogate (text.py) got this far: once as U+FFFD, never a dead
                    # writer (every later event of every run would wait for it forever).
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    if replaced:
                        log.error("dropped %d event(s) that are not text: %s", len(batch) - self._done, exc)
                        break
                    log.warning("stored %d event(s) with text that is not Unicode as U+FFFD",
                                len(batch) - self._done)
                    params, replaced = _unicode_only(batch, params), True
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    if self._closing and attempt >= 5:
                        log.error("could not store %d event(s) at shutdown: %s", len(batch) - self._done, exc)
                        break
                    log.error("storing %d event(s) failed (attempt %d), retrying: %s", len(batch) - self._done,
                              attempt, exc)
                    time.sleep(RETRY_S)
        finally:
            if appender is not None:
                appender.close()
        size = sum(row.size for row in batch)
        self._logged += sum(row.size if row.stored is None else len(row.stored) for row in batch)
        with self._cond:
            self.pending_bytes -= size
        self.commits += 1
        self.rows_written += len(batch)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is left to wake
            self.loop.call_soon_threadsafe(self._announce, batch)

    def _take(self) -> list[Row]:
        with self._cond:
            batch: list[Row] = []
            size = 0
            for row in self._queue:
                if batch and (len(batch) >= MAX_BATCH_ROWS or size + row.size > MAX_BATCH_BYTES):
                    break
                row.taken = True
                batch.append(row)
                size += row.size
            del self._queue[:len(batch)]
            return batch

    def _prepare(self, batch: list[Row]) -> tuple[list[tuple[str, int, str, str, str] | None], Appender | None]:
        """Each row's parameters; a large output text is appended to its run's file first, and
        the row refers to it. If the file cannot be written the text stays inline."""
        params: list[tuple[str, int, str, str, str] | None] = []
        appender: Appender | None = None
        for row in batch:
            if not row.insert:
                params.append(None)
                continue
            data = row.data
            if row.files is not None and row.files.wants(row.type, data):
                try:
                    if appender is None:
                        appender = row.files.appender()
                    text = data["text"]
                    body = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
                    offset, length = appender.append(row.key, body)
                    row.printed = body
                    data = {**{k: v for k, v in data.items() if k != "text"}, FIELD: [offset, length]}
                except (OSError, ValueError) as exc:
                    log.warning("output of %s stored inline: %s", row.key, exc)
            if isinstance(data.get("text"), bytes):  # ASCII bytes as read (``Chunk.raw``), stored inline
                data = {**data, "text": data["text"].decode("ascii")}
            row.stored = dumps(data)
            params.append((row.key, row.seq, row.type, row.stored, row.created_at))
        return params, appender

    def _commit(self, batch: list[Row], params: list[tuple[str, int, str, str, str] | None]) -> None:
        """Commit the rows from ``_done`` on (a retry skips those already committed). Between
        rows, if anyone waits for the write lock (the loop's short transactions), what is done
        is committed and they go first: nobody waits behind a whole batch."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        begun = self._done
        run: list[tuple[str, int, str, str, str]] = []
        sql = ""
        for index in range(self._done, len(batch)):
            row, values = batch[index], params[index]
            insert = _insert_sql(row.table, row.key_column)
            if row.also or insert != sql or len(run) >= STEP_ROWS:
                if run:
                    conn.executemany(sql, run)
                    run = []
                if index > begun and self.db.write_lock.wanted():
                    conn.execute("COMMIT")
                    self._logged += COMMIT_BYTES
                    self._done = begun = index
                    self.db.write_lock.step_aside()
                    conn.execute("BEGIN IMMEDIATE")
                for statement, statement_params in row.also:
                    conn.execute(statement, statement_params)
                sql = insert
            if values is not None:
                run.append(values)
        if run:
            conn.executemany(sql, run)
        conn.execute("COMMIT")
        self._logged += COMMIT_BYTES
        self._done = len(batch)


def _unicode_only(batch: list[Row], params: list[tuple[str, int, str, str, str] | None]
                  ) -> list[tuple[str, int, str, str, str] | None]:
    """The batch's parameters and statements without lone surrogates; ``stored`` follows (the
    live readers serve it)."""
    for row in batch:
        row.also = [(statement, unicode_only(values)) for statement, values in row.also]
        if row.stored is not None:
            row.stored = unicode_only(row.stored)
    return [None if values is None else unicode_only(values) for values in params]


@functools.cache
def _insert_sql(table: str, key_column: str) -> str:
    return f"INSERT INTO {table} ({key_column}, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)"
