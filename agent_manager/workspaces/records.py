"""Rows of the ``projects`` and ``workspaces`` tables (migration 0007)."""

from __future__ import annotations

from typing import Any

from agent_manager.errors import Conflict, NotFound
from agent_manager.store.database import Database, now

PUBLIC_FIELDS = ("branch", "base", "base_commit", "head_commit", "state", "files_changed", "insertions",
                 "deletions")


def add_project(db: Database, record: dict[str, Any]) -> dict[str, Any]:
    record = {"created_at": now(), **record}
    if db.one("SELECT 1 FROM projects WHERE name = ?", (record["name"],)):
        raise Conflict(f"a project named {record['name']!r} exists", [{"field": "name"}])
    cols, marks = ", ".join(record), ", ".join("?" for _ in record)
    with db.transaction() as conn:
        conn.execute(f"INSERT INTO projects ({cols}) VALUES ({marks})", tuple(record.values()))
    return project(db, record["name"])


def project(db: Database, ref: str) -> dict[str, Any]:
    row = db.one("SELECT * FROM projects WHERE name = ? OR id = ?", (ref, ref))
    if row is None:
        raise NotFound(f"project {ref!r} not found", [{"field": "project"}])
    return dict(row)


def projects(db: Database) -> list[dict[str, Any]]:
    return [dict(r) for r in db.all("SELECT * FROM projects ORDER BY name")]


def delete_project(db: Database, project_id: str) -> None:
    with db.transaction() as conn:
        conn.execute("DELETE FROM workspaces WHERE project_id = ?", (project_id,))
        conn.execute("DELETE FROM projects WHERE id = ?", (project_id,))


def add_workspace(db: Database, record: dict[str, Any]) -> dict[str, Any]:
    stamp = now()
    record = {"created_at": stamp, "updated_at": stamp, **record}
    cols, marks = ", ".join(record), ", ".join("?" for _ in record)
    with db.transaction() as conn:
        conn.execute(f"INSERT INTO workspaces ({cols}) VALUES ({marks})", tuple(record.values()))
    return workspace(db, record["id"])


def workspace(db: Database, ws_id: str) -> dict[str, Any]:
    row = db.one("SELECT w.*, p.name AS project FROM workspaces w JOIN projects p ON p.id = w.project_id"
                 " WHERE w.id = ?", (ws_id,))
    if row is None:
        raise NotFound(f"workspace {ws_id!r} not found")
    return dict(row)


def find_by_id(db: Database, ws_id: str) -> dict[str, Any] | None:
    """The workspace, or None when it is gone (its project was removed)."""
    try:
        return workspace(db, ws_id)
    except NotFound:
        return None


def find(db: Database, kind: str, owner_ref: str) -> dict[str, Any] | None:
    row = db.one("SELECT id FROM workspaces WHERE kind = ? AND owner_ref = ?", (kind, owner_ref))
    return workspace(db, row["id"]) if row else None


def of_project(db: Database, project_id: str, state: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT w.*, p.name AS project FROM workspaces w JOIN projects p ON p.id = w.project_id"
           " WHERE w.project_id = ?")
    params: list[Any] = [project_id]
    if state:
        sql += " AND w.state = ?"
        params.append(state)
    return [dict(r) for r in db.all(sql + " ORDER BY w.created_at DESC", params)]


def forget(db: Database, ws_id: str) -> None:
    with db.transaction() as conn:
        conn.execute("DELETE FROM workspaces WHERE id = ?", (ws_id,))


def update(db: Database, ws_id: str, **changes: Any) -> dict[str, Any]:
    changes["updated_at"] = now()
    assignments = ", ".join(f"{k} = ?" for k in changes)
    with db.transaction() as conn:
        conn.execute(f"UPDATE workspaces SET {assignments} WHERE id = ?", (*changes.values(), ws_id))
    return workspace(db, ws_id)


def public(ws: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``workspace`` object of a Run / Conversation / Orchestration (DESIGN 3.7)."""
    if ws is None:
        return None
    return {"id": ws["id"], "project": ws["project"], **{k: ws[k] for k in PUBLIC_FIELDS},
            "created_at": ws["created_at"], "updated_at": ws["updated_at"], "note": ws.get("note") or None}


def attach(db: Database, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (a run or a conversation) with its ``project`` and ``workspace`` (DESIGN 3.7)."""
    ws = None
    if row.get("workspace_id"):
        try:
            ws = workspace(db, row["workspace_id"])
        except NotFound:  # its project was removed since: the row stays readable
            ws = None
    return {**row, "project": ws["project"] if ws else None, "workspace": public(ws)}


def link(db: Database, table: str, row_id: str, ws_id: str) -> None:
    assert table in ("runs", "conversations", "orchestrations")
    with db.transaction() as conn:
        conn.execute(f"UPDATE {table} SET workspace_id = ? WHERE id = ?", (ws_id, row_id))


def linked(db: Database, table: str, row_id: str) -> dict[str, Any] | None:
    assert table in ("runs", "conversations", "orchestrations")
    row = db.one(f"SELECT workspace_id FROM {table} WHERE id = ?", (row_id,))
    return find_by_id(db, row["workspace_id"]) if row and row["workspace_id"] else None
