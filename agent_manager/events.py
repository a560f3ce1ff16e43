"""Append-only, numbered event logs with live waiting.

Why readers poll the table instead of getting pushed copies: an event is committed before
anyone is told, so a reader that (re)connects with ``after=<seq>`` reads exactly what it
missed from the same table the live path uses. Live delivery is then only a wake-up. No
per-client queue exists, so a slow client cannot grow the service's memory.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent_manager.store.database import Database, dumps, now


class EventLog:
    """One log per owner row, in ``table`` keyed by ``key_column`` (e.g. run_events.run_id)."""

    def __init__(self, db: Database, table: str, key_column: str) -> None:
        self.db = db
        self.table = table
        self.key_column = key_column
        self._last: dict[str, int] = {}
        self._wakeups: dict[str, asyncio.Event] = {}

    def last_seq(self, key: str) -> int:
        if key not in self._last:
            row = self.db.one(f"SELECT MAX(seq) AS s FROM {self.table} WHERE {self.key_column} = ?", (key,))
            self._last[key] = int(row["s"]) if row and row["s"] is not None else 0
        return self._last[key]

    def append(self, key: str, type_: str, data: dict[str, Any]) -> int:
        """Persist one event (committed), then wake the readers of ``key``. Returns its seq."""
        seq = self.last_seq(key) + 1
        with self.db.transaction() as conn:
            conn.execute(f"INSERT INTO {self.table} ({self.key_column}, seq, type, data, created_at)"
                         " VALUES (?, ?, ?, ?, ?)", (key, seq, type_, dumps(data), now()))
        self._last[key] = seq
        wakeup = self._wakeups.pop(key, None)
        if wakeup is not None:
            wakeup.set()
        return seq

    def read(self, key: str, after: int = 0, limit: int = 64) -> list[dict[str, Any]]:
        rows = self.db.all(f"SELECT seq, type, data, created_at FROM {self.table}"
                           f" WHERE {self.key_column} = ? AND seq > ? ORDER BY seq LIMIT ?", (key, after, limit))
        return [{"seq": r["seq"], "type": r["type"], "data": json.loads(r["data"]),
                 "created_at": r["created_at"]} for r in rows]

    def read_raw(self, key: str, after: int = 0, limit: int = 64) -> list[tuple[int, str, str, str]]:
        """(seq, type, data-as-JSON-text, created_at) without decoding: the SSE path sends the text as is."""
        rows = self.db.all(f"SELECT seq, type, data, created_at FROM {self.table}"
                           f" WHERE {self.key_column} = ? AND seq > ? ORDER BY seq LIMIT ?", (key, after, limit))
        return [(r["seq"], r["type"], r["data"], r["created_at"]) for r in rows]

    async def wait(self, key: str, after: int, timeout: float) -> bool:
        """Wait until an event newer than ``after`` exists; False on timeout."""
        if self.last_seq(key) > after:
            return True
        wakeup = self._wakeups.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(wakeup.wait(), timeout)
        except TimeoutError:
            return self.last_seq(key) > after
        return True

    def forget(self, key: str) -> None:
        """Drop cached state of a finished log (its rows stay)."""
        self._last.pop(key, None)
