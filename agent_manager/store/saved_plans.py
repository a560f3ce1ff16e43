"""Saved plans: a validated plan kept under a name, to run again from the Plans page or the API.

Why by name with an upsert: saving "nightly-report" again is how a user updates it, and two
plans with one name would make "run the nightly report" ambiguous. Each user sees only their
own (the admin sees all), like runs and orchestrations.
"""

from __future__ import annotations

import json
from typing import Any

from agent_manager.errors import NotFound
from agent_manager.store.database import Database, dumps, new_id, now


def _row(row: Any) -> dict[str, Any]:
    data = dict(row)
    data["plan"] = json.loads(data["plan"])
    data["steps"] = len(data["plan"].get("steps", []))
    return data


def save(db: Database, name: str, plan: dict[str, Any], owner: str | None) -> tuple[dict[str, Any], bool]:
    """(the saved plan, created?): an existing plan of that name and owner is replaced."""
    stamp = now()
    with db.transaction() as conn:
        found = conn.execute("SELECT id FROM saved_plans WHERE COALESCE(owner, '') = ? AND name = ?",
                             (owner or "", name)).fetchone()
        if found is None:
            plan_id = new_id("plan")
            conn.execute("INSERT INTO saved_plans (id, name, plan, owner, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, ?)", (plan_id, name, dumps(plan), owner, stamp, stamp))
        else:
            plan_id = found["id"]
            conn.execute("UPDATE saved_plans SET plan = ?, updated_at = ? WHERE id = ?", (dumps(plan), stamp, plan_id))
    return get(db, plan_id), found is None


def get(db: Database, plan_id: str, owner: str | None = None) -> dict[str, Any]:
    row = db.one("SELECT * FROM saved_plans WHERE id = ?", (plan_id,))
    if row is None or (owner is not None and row["owner"] != owner):
        raise NotFound(f"saved plan {plan_id!r} not found")
    return _row(row)


def list_all(db: Database, owner: str | None = None) -> list[dict[str, Any]]:
    if owner is None:
        rows = db.all("SELECT * FROM saved_plans ORDER BY name")
    else:
        rows = db.all("SELECT * FROM saved_plans WHERE owner = ? ORDER BY name", (owner,))
    return [_row(r) for r in rows]


def delete(db: Database, plan_id: str, owner: str | None = None) -> None:
    get(db, plan_id, owner)
    with db.transaction() as conn:
        conn.execute("DELETE FROM saved_plans WHERE id = ?", (plan_id,))
