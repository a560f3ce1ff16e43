"""Totals of finished runs, for counters that must never go backwards (``agent_manager.metrics``).

Why a table of sums rather than counting the runs table at start: retention deletes runs, and
counting a million rows would slow every start. Each finish adds itself to ``run_totals`` in
the transaction that records it, so the sums equal what the previous process counted, at a
cost of one small upsert per run; migration 0011 filled them from the runs already there.
Durations are whole milliseconds (timestamps have millisecond precision), so sums are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_manager.store.database import Queryable, duration

# Upper bounds of the run-duration histogram buckets, in milliseconds (+Inf is implied). The
# migration that filled the table from old runs spells the same bounds out in SQL.
BUCKETS_MS: tuple[int, ...] = (100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000)
NO_DURATION = -1
INF_MS = 9_223_372_036_854_775_807


@dataclass(frozen=True)
class Total:
    backend: str
    status: str
    bucket_ms: int  # NO_DURATION, one of BUCKETS_MS, or INF_MS
    runs: int
    duration_ms: int


def duration_ms(started: str | None, finished: str | None) -> int | None:
    """A run's duration as the totals keep it: whole milliseconds, never negative."""
    seconds = duration(started, finished)
    return None if seconds is None else max(0, round(seconds * 1000))


def bucket_of(ms: int | None) -> int:
    """The bucket a duration falls in (the smallest bound at or above it)."""
    if ms is None:
        return NO_DURATION
    return next((bound for bound in BUCKETS_MS if ms <= bound), INF_MS)


def add_statement(backend: str | None, status: str, ms: int | None) -> tuple[str, tuple[int | str, ...]]:
    """The upsert that counts one finished run; commit it with the run's final row."""
    return ("INSERT INTO run_totals (backend, status, bucket_ms, runs, duration_ms) VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (backend, status, bucket_ms) DO UPDATE SET runs = runs + 1,"
            " duration_ms = duration_ms + excluded.duration_ms",
            (backend or "none", status, bucket_of(ms), ms or 0))


def load(db: Queryable) -> list[Total]:
    """Every run ever finished on this database, by backend, status and duration bucket."""
    return [Total(r["backend"], r["status"], int(r["bucket_ms"]), int(r["runs"]), int(r["duration_ms"]))
            for r in db.all("SELECT backend, status, bucket_ms, runs, duration_ms FROM run_totals")]
