"""Totals of finished runs, for counters that must never go backwards (``agent_manager.metrics``).

The service counts finished runs from the ``runs`` table when it starts, then adds each run as
it finishes. Retention deletes old rows, so what it deletes is first added to ``pruned_runs``
(in the same transaction): rows plus that table always give every run ever finished here.
Durations are whole milliseconds (timestamps have millisecond precision), so sums are exact
integers and a total read at start equals the one the previous process reached.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from agent_manager.models import TERMINAL_STATUSES
from agent_manager.store.database import Queryable

# Upper bounds of the run-duration histogram buckets, in milliseconds (+Inf is implied).
BUCKETS_MS: tuple[int, ...] = (100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000)
NO_DURATION = -1
INF_MS = 9_223_372_036_854_775_807
_STATUSES = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
_DURATION_MS = ("MAX(0, CAST(ROUND((julianday(finished_at) - julianday(started_at)) * 86400000.0) AS INTEGER))")


@dataclass(frozen=True)
class Total:
    backend: str
    status: str
    bucket_ms: int  # NO_DURATION, one of BUCKETS_MS, or INF_MS
    runs: int
    duration_ms: int


def bucket_of(duration_ms: int | None) -> int:
    """The bucket a duration falls in (the smallest bound at or above it)."""
    if duration_ms is None:
        return NO_DURATION
    return next((bound for bound in BUCKETS_MS if duration_ms <= bound), INF_MS)


def _per_row(where: str) -> str:
    bucket = " ".join(f"WHEN d <= {bound} THEN {bound}" for bound in BUCKETS_MS)
    return (f"SELECT backend, status, CASE WHEN d IS NULL THEN {NO_DURATION} {bucket} ELSE {INF_MS} END AS bucket_ms,"
            f" d FROM (SELECT COALESCE(backend, 'none') AS backend, status, {_DURATION_MS} AS d FROM runs"
            f" WHERE status IN ({_STATUSES}) AND {where})")


def load(db: Queryable) -> list[Total]:
    """Every finished run, still stored or pruned, grouped by backend, status and bucket."""
    rows = db.all(
        "SELECT backend, status, bucket_ms, SUM(runs) AS runs, SUM(duration_ms) AS duration_ms FROM ("
        f" SELECT backend, status, bucket_ms, 1 AS runs, COALESCE(d, 0) AS duration_ms FROM ({_per_row('1')})"
        " UNION ALL SELECT backend, status, bucket_ms, runs, duration_ms FROM pruned_runs)"
        " GROUP BY backend, status, bucket_ms")
    return [Total(r["backend"], r["status"], int(r["bucket_ms"]), int(r["runs"]), int(r["duration_ms"]))
            for r in rows]


def carry(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    """Add the runs about to be deleted to ``pruned_runs`` (call in the deleting transaction)."""
    marks = ", ".join("?" for _ in ids)
    conn.execute(
        "INSERT INTO pruned_runs (backend, status, bucket_ms, runs, duration_ms)"
        f" SELECT backend, status, bucket_ms, COUNT(*), COALESCE(SUM(d), 0) FROM ({_per_row(f'id IN ({marks})')})"
        " WHERE true GROUP BY backend, status, bucket_ms"
        " ON CONFLICT (backend, status, bucket_ms) DO UPDATE SET runs = runs + excluded.runs,"
        " duration_ms = duration_ms + excluded.duration_ms", list(ids))
