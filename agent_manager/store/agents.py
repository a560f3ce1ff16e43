"""Agent rows: create, read by id or name, update, delete."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agent_manager.errors import Conflict, NotFound
from agent_manager.store.database import Database, dumps, new_id, now, update_named

JSON_FIELDS = ("args", "env")
BOOL_FIELDS = ("trusted", "network")
# The gateway fields live in the env JSON column under names no environment variable can
# have (models.ENV_NAME_RE), so they need no schema change and never reach a process env.
GATEWAY_FIELDS = {"api_base": "@api_base", "api_key": "@api_key"}


def row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    for name in JSON_FIELDS:
        data[name] = json.loads(data[name])
    for name in BOOL_FIELDS:
        data[name] = bool(data[name])
    for name, stored in GATEWAY_FIELDS.items():
        data[name] = data["env"].pop(stored, None)
    return data


def _fold_gateway(fields: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put ``api_base`` / ``api_key`` into ``env`` for storage (keeping current values that
    ``fields`` does not change)."""
    if not any(k in fields for k in ("env", *GATEWAY_FIELDS)):
        return fields
    out = {k: v for k, v in fields.items() if k not in GATEWAY_FIELDS}
    base = current or {}
    env = dict(fields.get("env", base.get("env", {})))
    for name, stored in GATEWAY_FIELDS.items():
        value = fields.get(name, base.get(name))
        if value:
            env[stored] = value
    out["env"] = env
    return out


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for name in JSON_FIELDS:
        if name in out:
            out[name] = dumps(out[name])
    for name in BOOL_FIELDS:
        if name in out:
            out[name] = int(bool(out[name]))
    return out


def create(db: Database, fields: dict[str, Any]) -> dict[str, Any]:
    stamp = now()
    record = {"id": new_id("ag"), "created_at": stamp, "updated_at": stamp, **_fold_gateway(fields)}
    encoded = _encode(record)
    cols = ", ".join(encoded)
    marks = ", ".join("?" for _ in encoded)
    try:
        with db.transaction() as conn:
            conn.execute(f"INSERT INTO agents ({cols}) VALUES ({marks})", tuple(encoded.values()))
    except sqlite3.IntegrityError as exc:
        raise Conflict(f"an agent named {fields['name']!r} already exists", {"field": "name"}) from exc
    return get(db, record["id"])


def find(db: Database, ref: str) -> dict[str, Any] | None:
    row = db.one("SELECT * FROM agents WHERE id = ?", (ref,)) or db.one(
        "SELECT * FROM agents WHERE name = ?", (ref,))
    return row_to_dict(row) if row else None


def get(db: Database, ref: str) -> dict[str, Any]:
    agent = find(db, ref)
    if agent is None:
        raise NotFound(f"agent {ref!r} not found")
    return agent


def list_all(db: Database) -> list[dict[str, Any]]:
    return [row_to_dict(r) for r in db.all("SELECT * FROM agents ORDER BY name")]


def update(db: Database, ref: str, changes: dict[str, Any]) -> dict[str, Any]:
    agent = get(db, ref)
    if not changes:
        return agent
    update_named(db, "agents", agent["id"], _encode({**_fold_gateway(changes, agent), "updated_at": now()}),
                 "an agent")
    return get(db, agent["id"])


def delete(db: Database, ref: str) -> None:
    agent = get(db, ref)
    with db.transaction() as conn:
        conn.execute("DELETE FROM agents WHERE id = ?", (agent["id"],))
