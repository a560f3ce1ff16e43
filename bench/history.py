"""A big stored history for bench/scale.py's restart case, written straight into SQLite (through
the service it would take hours): runs with their answers, search entries and events."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any


def build_history(home: Path, events: int, per_run: int = 100) -> dict[str, Any]:
    """A data directory holding ``events`` run events (``per_run`` per run), written directly."""
    from agent_manager.store.database import Database

    db = Database(home / "agent-manager.db")
    db.migrate()
    db.close()
    rng = random.Random(7)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    conn = sqlite3.connect(home / "agent-manager.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    started = time.perf_counter()
    runs = events // per_run
    with conn:
        conn.execute("INSERT INTO agents (id, name, kind, command, args, env, trusted, created_at, updated_at)"
                     " VALUES ('agt_hist', 'hist', 'generic', 'echo', '[]', '{}', 1, '2026-01-01T00:00:00.000Z',"
                     " '2026-01-01T00:00:00.000Z')")
        for r in range(runs):
            run_id = f"run_h{r:011d}"
            prompt = " ".join(rng.choice(words) for _ in range(6)) + f" job{r}"
            stamp = f"2026-01-{1 + r * 28 // runs:02d}T00:00:{r % 60:02d}.000Z"
            answer = f"answer {prompt}"
            entry = conn.execute("INSERT INTO runs_fts (run_id, prompt, output) VALUES (?, ?, ?)",
                                 (run_id, prompt, answer)).lastrowid
            conn.execute("INSERT INTO runs (id, agent_id, agent_name, prompt, status, backend, exit_code,"
                         " output_preview, output_chars, created_at, started_at, finished_at, search_rowid)"
                         " VALUES (?, 'agt_hist', 'hist', ?, 'succeeded', 'local', 0, ?, ?, ?, ?, ?, ?)",
                         (run_id, prompt, answer, len(answer), stamp, stamp, stamp, entry))
            conn.execute("INSERT INTO run_answers (run_id, output) VALUES (?, ?)", (run_id, answer))
            conn.executemany("INSERT INTO run_events (run_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)",
                             [(run_id, s, "output", json.dumps({"stream": "stdout", "text": f"line {s} of {prompt}\n"}),
                               stamp) for s in range(1, per_run + 1)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = (home / "agent-manager.db").stat().st_size
    return {"events": runs * per_run, "runs": runs, "db_mb": round(size / 1e6, 1),
            "build_s": round(time.perf_counter() - started, 1)}
