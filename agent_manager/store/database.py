"""The SQLite connections and the migrations.

Three kinds of connection, each for what it is good at:

- the main connection, used from the event-loop thread for short statements (create a run,
  change its status) where the caller needs the result at once;
- the event writer (``store.writer``), a thread with its own connection that commits the
  high-rate event rows in one transaction per batch, off the loop;
- read connections in a small thread pool (``Database.read``) for the queries that grow with
  the data (search, counts, run lists), so a big history never stalls the loop.

Writers take ``write_lock`` around their transactions: SQLite allows one writer at a time and
its own busy handler waits by sleeping in steps of milliseconds, a Python lock hands over at
once, and the event writer steps aside between its rows for anyone waiting (``WriteLock``).
No connection checkpoints on its own: the writer thread does, between batches, outside the
lock, so a checkpoint and its fsync hold up the loop only in the rare case where a long WAL
has to be made to start over (``EventWriter._checkpoint``). WAL with ``synchronous=NORMAL``
keeps every committed transaction across a crash of the service (only a power loss can drop
the last ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from agent_manager.errors import ConfigError, Conflict
from agent_manager.store.output_files import OutputFiles

if TYPE_CHECKING:
    from agent_manager.store.writer import EventWriter

T = TypeVar("T")
READ_THREADS = 2


_stamp: tuple[int, str] = (-1, "")  # (whole second, its text) of the last ``now``


def now() -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-28T07:30:00.123Z``. The text of the
    second is cached: every event row is stamped, thousands a second under load."""
    global _stamp
    ms = time.time_ns() // 1_000_000
    second, milli = divmod(ms, 1000)
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_stamp[1]}.{milli:03d}Z"


def duration(started: str | None, finished: str | None) -> float | None:
    """Seconds between two ``now()`` stamps (None until both are known), to the millisecond."""
    if not started or not finished:
        return None
    return round((datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds(), 3)


def update_named(db: Database, table: str, row_id: str, fields: dict[str, Any], noun: str) -> None:
    """``UPDATE table SET fields WHERE id``, for a table whose ``name`` is unique: a name another
    row has is refused with a 409 naming it (the UNIQUE constraint decides, so no race)."""
    assignments = ", ".join(f"{k} = ?" for k in fields)
    try:
        with db.transaction() as conn:
            conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*fields.values(), row_id))
    except sqlite3.IntegrityError as exc:
        raise Conflict(f"{noun} named {fields.get('name')!r} already exists", {"field": "name"}) from exc


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one, not one per call (json.dumps)


# What the migrations and queries use: DROP COLUMN (0012) is 3.35; window functions (3.25), upserts
# (3.24) and the JSON functions are older. Python links the system's SQLite: Ubuntu 20.04 has 3.31.
MIN_SQLITE = (3, 35, 0)


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every ``NNNN_name.sql`` file, in order."""
    found = []
    for entry in resources.files("agent_manager.store.migrations").iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append((int(entry.name[:4]), entry.name, entry.read_text()))
    return sorted(found)


class Queryable(Protocol):
    """What the read-only store functions need: the main ``Database`` or a pooled ``Reader``."""

    def one(self, sql: str, params: Any = ()) -> sqlite3.Row | None: ...

    def all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]: ...


def connect(path: Path | str, *, read_only: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    if read_only:
        conn.execute("PRAGMA query_only=1")
    return conn


class WriteLock:
    """SQLite's one writer at a time, as a lock the event writer can step aside from.

    Why: the event writer's batch can be long (indexing a few dozen finished runs' answers took
    20-30 ms), and a short transaction on the loop (a run's end, a new run) waited for all of
    it, and every HTTP request with it. A holder calls ``step_aside`` between its rows: if
    someone waits, they go first, then it takes the lock back. First come, first served
    otherwise; usable as ``with lock:``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._waiting = 0

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        with self._cond:
            self._waiting += 1
            taken = False
            try:
                while self._held:
                    self._cond.wait()
                self._held = taken = True
            finally:
                self._waiting -= 1
                if not taken:  # interrupted: a holder in ``step_aside`` may wait for this count
                    self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def wanted(self) -> bool:
        """Whether someone waits for the lock (a hint: read without the condition's lock)."""
        return self._waiting > 0

    def step_aside(self) -> None:
        """For the holder: let everyone waiting now go first, then hold the lock again."""
        with self._cond:
            if not self._waiting:
                return
            self._held = False
            self._cond.notify_all()
            while self._held or self._waiting:
                self._cond.wait()
            self._held = True


class Reader:
    """A read-only connection owned by one pool thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()


class Database:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.in_memory = str(path) == ":memory:"
        try:
            if not self.in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _private_files(self.path)
            self.conn = connect(path)
            # Checkpoints (and their fsync) belong to the writer thread, never to the loop.
            self.conn.execute("PRAGMA wal_autocheckpoint=0")
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the database {path}: {exc}") from exc
        self._depth = 0
        # Large run output lives in files beside the database (``output_files``); an
        # in-memory database keeps everything inline.
        self.output_files: OutputFiles | None = None if self.in_memory else OutputFiles(self.path.parent / "run-output")
        self.write_lock = WriteLock()
        self.commits = 0  # transactions committed on this connection (the writer's checkpoints count them)
        self._writer: EventWriter | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def writer(self) -> EventWriter:
        """The event-writer thread (started on first use, bound to the running loop)."""
        if self._writer is None:
            from agent_manager.store.writer import EventWriter
            self._writer = EventWriter(self, asyncio.get_running_loop())
        return self._writer

    def commit_later(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Commit ``statements`` in the event writer's next batch, off the loop; here and now
        when the writer has stopped (shutdown) or there is no loop."""
        try:
            self.writer().put_statements(statements)
        except RuntimeError:
            with self.transaction() as conn:
                for statement, params in statements:
                    conn.execute(statement, params)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(reader, *args)`` on a read connection in the pool: sees every committed row."""
        if self.in_memory:  # a second connection would open a different, empty database
            return fn(self, *args, **kwargs)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="am-db-read")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._reader(), *args, **kwargs))

    def _reader(self) -> Reader:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, read_only=True)
            self._readers.append(conn)
        return Reader(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        with self.write_lock:
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk: SQLITE_FULL);
                # a second ROLLBACK would fail and hide the error that says what happened.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")
                self.commits += 1
            finally:
                self._depth = 0

    def in_transaction(self) -> bool:
        """True inside ``transaction()``: what is written now is not committed yet."""
        return self._depth > 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def version(self) -> int:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                          " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        row = self.one("SELECT MAX(version) AS v FROM schema_version")
        return int(row["v"]) if row and row["v"] is not None else 0

    def migrate(self) -> list[int]:
        """Apply every migration not applied yet, in order, each in its own transaction.

        "Not applied" rather than "newer than the highest applied": migrations numbered in
        parallel can land out of order (0005 after 0006), and a database that already got the
        later one must still get the earlier one. Each migration is recorded in schema_version.
        """
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigError(
                f"this Python's SQLite is {sqlite3.sqlite_version}; Agent Manager needs"
                f" {'.'.join(map(str, MIN_SQLITE))} or later (ALTER TABLE ... DROP COLUMN): use a Python"
                " built with a newer SQLite (Debian 12, Ubuntu 22.04 and python.org builds have one)")
        applied = []
        try:
            self.version()  # creates schema_version
            _migration_functions(self.conn)
            done = {int(r["version"]) for r in self.all("SELECT version FROM schema_version")}
            known = migrations()
            newer = sorted(done - {version for version, _, _ in known})
            if newer:
                # An older release on a database a newer one migrated (0012 dropped runs.output)
                # would answer 500 to every run read and could write rows the newer one misreads.
                raise ConfigError(
                    f"the database {self.path} was upgraded by a newer Agent Manager (schema"
                    f" migration {', '.join(map(str, newer))} is unknown to this version): run that"
                    " version, or restore the backup of the data directory taken before the upgrade")
            for version, name, sql in known:
                if version in done:
                    continue
                with self.transaction() as conn:
                    for statement in _statements(sql):
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (version, name, now()))
                applied.append(version)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot migrate the database {self.path}: {exc}") from exc
        return applied

    def close(self) -> None:
        """Commit what the writer still holds, then close every connection."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for conn in self._readers:
            conn.close()
        self._readers.clear()
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.conn.close()


def _private_files(path: Path) -> None:
    """The database and its -wal/-shm: 0600 from the first byte. SQLite creates -wal and -shm
    (again after every checkpoint that removes them) with the database file's own mode, so a
    0600 database keeps them 0600 too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


def _migration_functions(conn: sqlite3.Connection) -> None:
    """SQL functions a migration may call. SQLite's own length(), substr() and replace() stop at
    a text's first NUL character, and an agent may print NULs: 0012 takes an answer's length and
    first characters with these, so they agree with what the service computes (Python's len and
    slices) for every answer."""
    conn.create_function("am_text_length", 1, lambda text: None if text is None else len(text),
                         deterministic=True)
    conn.create_function("am_text_prefix", 2, lambda text, n: None if text is None else text[:n],
                         deterministic=True)


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (our migrations have no ';' inside literals)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
