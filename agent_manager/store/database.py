"""The SQLite connection and its migrations.

Why one connection used from the event-loop thread: every statement here is short, SQLite
serialises writers anyway, and one connection makes "persist, then announce" trivially
ordered. WAL with ``synchronous=NORMAL`` keeps every committed event across a crash of the
service (only a power loss can drop the last transactions).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from agent_manager.errors import ConfigError


def now() -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-28T07:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every ``NNNN_name.sql`` file, in order."""
    found = []
    for entry in resources.files("agent_manager.store.migrations").iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append((int(entry.name[:4]), entry.name, entry.read_text()))
    return sorted(found)


class Database:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _private_files(self.path)
            self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA busy_timeout=5000")
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the database {path}: {exc}") from exc
        self._depth = 0

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
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._depth = 0

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
        """Apply every migration newer than the stored version, each in its own transaction."""
        applied = []
        try:
            current = self.version()
            for version, name, sql in migrations():
                if version <= current:
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


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (our migrations have no ';' inside literals)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
