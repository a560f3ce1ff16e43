"""What keeping /metrics totals in the database costs; prints JSON.

An upgraded database of ``--runs`` finished runs gets migration 0011 (which sums the existing
runs once), then the service's start-up read of the sums, then ``--finishes`` upserts of the
kind each finishing run commits with its final row, and a scrape of a registry loaded from
them. See bench/README.md.

Usage: ``.venv/bin/python bench/metrics_totals.py [--runs 1000000] [--finishes 10000]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent_manager.metrics import ServiceMetrics
from agent_manager.store import run_totals
from agent_manager.store.database import Database


class _Idle:
    queued = 0
    host_running = 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--finishes", type=int, default=10_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="am-bench-metrics-"))
    try:
        db = Database(tmp / "agent-manager.db")
        db.migrate()
        with db.transaction() as conn:  # back to a database from before 0011
            conn.execute("DROP TABLE run_totals")
            conn.execute("DROP TABLE sessions")
            conn.execute("DELETE FROM schema_version WHERE version = 11")
        t0 = datetime(2026, 1, 1, tzinfo=UTC)

        def stamp(moment: datetime) -> str:
            return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

        rows = ((f"run_{i:09d}", "a", "a", "p", "succeeded", "local", stamp(t0),
                 stamp(t0 + timedelta(seconds=i % 100)), stamp(t0 + timedelta(seconds=i % 100, milliseconds=i % 5000)))
                for i in range(args.runs))
        with db.transaction() as conn:
            conn.executemany("INSERT INTO runs (id, agent_id, agent_name, prompt, status, backend, created_at,"
                             " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        started = time.perf_counter()
        db.migrate()
        migration_s = time.perf_counter() - started
        started = time.perf_counter()
        metrics = ServiceMetrics(_Idle(), {})
        metrics.load(db)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(args.finishes):
            sql, params = run_totals.add_statement("local", "succeeded", i % 7000)
            with db.transaction() as conn:
                conn.execute(sql, params)
        upsert_us = (time.perf_counter() - started) / args.finishes * 1e6
        started = time.perf_counter()
        text = metrics.exposition()
        scrape_ms = (time.perf_counter() - started) * 1000
        figures = {"migration_0011_s": round(migration_s, 3), "load_at_start_s": round(load_s, 5),
                   "finish_upsert_us": round(upsert_us, 1), "scrape_ms": round(scrape_ms, 3),
                   "scrape_bytes": len(text)}
        goals = {"load_at_start_s": 0.05, "finish_upsert_us": 1000, "scrape_ms": 50}
        passed = {name: figures[name] <= limit for name, limit in goals.items()}
        print(json.dumps({"params": vars(args), "nproc": os.cpu_count(), "goals": goals, "pass": passed,
                          "all_pass": all(passed.values()), "figures": figures}, indent=2))
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
