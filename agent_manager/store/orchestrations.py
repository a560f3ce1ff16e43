"""Orchestration rows and the state of their steps.

The engine writes a step's new state here (in the same transaction as the event that
announces it), so the database always holds the latest truth: what resume and the API read.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from agent_manager.errors import NotFound
from agent_manager.store.database import Database, Queryable, dumps, duration, now

STEP_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled", "skipped")


def create(db: Database, record: dict[str, Any], step_ids: list[str]) -> None:
    record = {"created_at": now(), **record, "plan": dumps(record["plan"])}
    cols = ", ".join(record)
    marks = ", ".join("?" for _ in record)
    with db.transaction() as conn:
        conn.execute(f"INSERT INTO orchestrations ({cols}) VALUES ({marks})", tuple(record.values()))
        conn.executemany("INSERT INTO orchestration_steps (orchestration_id, step_id, position, status)"
                         " VALUES (?, ?, ?, 'pending')", [(record["id"], s, i) for i, s in enumerate(step_ids)])


def get_row(db: Database, orch_id: str, owner: str | None = None) -> dict[str, Any]:
    row = db.one("SELECT * FROM orchestrations WHERE id = ?", (orch_id,))
    if row is None or (owner is not None and row["owner"] != owner):
        raise NotFound(f"orchestration {orch_id!r} not found")
    data = dict(row)
    data["plan"] = json.loads(data["plan"])
    return data


def steps(db: Database, orch_id: str) -> list[dict[str, Any]]:
    rows = db.all("SELECT * FROM orchestration_steps WHERE orchestration_id = ? ORDER BY position", (orch_id,))
    return [dict(r) for r in rows]


def update(db: Database, orch_id: str, **changes: Any) -> None:
    assignments = ", ".join(f"{k} = ?" for k in changes)
    with db.transaction() as conn:
        conn.execute(f"UPDATE orchestrations SET {assignments} WHERE id = ?", (*changes.values(), orch_id))


def update_step(db: Database, orch_id: str, step_id: str, **changes: Any) -> None:
    assignments = ", ".join(f"{k} = ?" for k in changes)
    with db.transaction() as conn:
        conn.execute(f"UPDATE orchestration_steps SET {assignments} WHERE orchestration_id = ? AND step_id = ?",
                     (*changes.values(), orch_id, step_id))


def counts(step_rows: list[dict[str, Any]]) -> dict[str, int]:
    found = Counter(s["status"] for s in step_rows)
    return {status: found.get(status, 0) for status in STEP_STATUSES} | {"total": len(step_rows)}


def view(db: Database, orch_id: str, owner: str | None = None) -> dict[str, Any]:
    """The public shape (DESIGN 3.4): the orchestration with per-step state and counts."""
    orch = get_row(db, orch_id, owner)
    plan_steps = {s["id"]: s for s in orch["plan"]["steps"]}
    step_rows = steps(db, orch_id)
    run_ids = [row["run_id"] for row in step_rows if row["run_id"]]
    reasons = {r["id"]: r["route_reason"] for r in db.all(
        f"SELECT id, route_reason FROM runs WHERE id IN ({', '.join('?' * len(run_ids))})", run_ids)}
    out_steps = []
    for row in step_rows:
        spec = plan_steps.get(row["step_id"], {})
        out_steps.append({
            "id": row["step_id"], "status": row["status"], "run_id": row["run_id"], "backend": row["backend"],
            "route_reason": reasons.get(row["run_id"]), "attempts": row["attempts"],
            "queued_at": row["queued_at"], "started_at": row["started_at"],
            "finished_at": row["finished_at"], "duration_s": duration(row["started_at"], row["finished_at"]),
            "output": row["output"], "error": row["error"],
            "action": spec.get("action") or ("agent" if spec.get("agent") else None),
            "agent": spec.get("agent"), "depends_on": spec.get("depends_on", [])})
    return {"id": orch["id"], "name": orch["name"], "status": orch["status"], "error": orch["error"],
            "max_parallel": orch["max_parallel"], "workspace_dir": orch["workspace"],
            "workspace_id": orch.get("workspace_id"),
            "counts": counts(step_rows), "created_at": orch["created_at"], "started_at": orch["started_at"],
            "finished_at": orch["finished_at"], "duration_s": duration(orch["started_at"], orch["finished_at"]),
            "owner": orch["owner"], "plan": orch["plan"], "steps": out_steps}


def search(db: Queryable, *, owner: str | None = None, status: str | None = None, limit: int = 50,
           offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Newest first, with counts per step status (no outputs: a list must stay small)."""
    where, params = [], []
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    if status:
        where.append("status = ?")
        params.append(status)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    total = db.one(f"SELECT COUNT(*) AS n FROM orchestrations {clause}", params)
    rows = db.all(f"SELECT id, name, status, error, max_parallel, owner, created_at, started_at, finished_at"
                  f" FROM orchestrations {clause} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                  (*params, limit, offset))
    items = []
    for row in rows:
        item = dict(row)
        step_rows = db.all("SELECT status FROM orchestration_steps WHERE orchestration_id = ?", (row["id"],))
        item["counts"] = counts([dict(r) for r in step_rows])
        item["duration_s"] = duration(row["started_at"], row["finished_at"])
        items.append(item)
    return items, int(total["n"]) if total else 0


def with_status(db: Database, status: str) -> list[str]:
    return [r["id"] for r in db.all("SELECT id FROM orchestrations WHERE status = ?", (status,))]
