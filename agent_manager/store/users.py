"""User rows (name, token hash, trusted/admin flags) and the audit log.

Why only a hash: a user token is shown once, when it is created or rotated; the database
keeps ``sha256(token)``, so a copy of the database does not let anyone log in. Tokens are 256
random bits, so an unsalted fast hash is enough (there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from typing import Any

from agent_manager.errors import Conflict, NotFound
from agent_manager.store.database import Database, dumps, new_id, now, update_named

TOKEN_PREFIX = "amu_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data.pop("token_hash", None)
    data["trusted"] = bool(data["trusted"])
    data["admin"] = bool(data["admin"])
    return data


def create(db: Database, name: str, *, trusted: bool = False, admin: bool = False) -> tuple[dict[str, Any], str]:
    """Returns (user, token); the token is not stored and cannot be shown again."""
    token = new_token()
    user_id = new_id("usr")
    try:
        with db.transaction() as conn:
            conn.execute("INSERT INTO users (id, name, token_hash, trusted, admin, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (user_id, name, token_hash(token), int(trusted), int(admin), now()))
    except sqlite3.IntegrityError as exc:
        raise Conflict(f"a user named {name!r} already exists", {"field": "name"}) from exc
    return get(db, user_id), token


def get(db: Database, user_id: str) -> dict[str, Any]:
    row = db.one("SELECT * FROM users WHERE id = ? OR name = ?", (user_id, user_id))
    if row is None:
        raise NotFound(f"user {user_id!r} not found")
    return row_to_dict(row)


def list_all(db: Database) -> list[dict[str, Any]]:
    return [row_to_dict(r) for r in db.all("SELECT * FROM users ORDER BY created_at, name")]


def update(db: Database, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    user = get(db, user_id)
    fields = {k: (int(v) if isinstance(v, bool) else v) for k, v in changes.items()
              if k in ("name", "trusted", "admin")}
    if fields:
        update_named(db, "users", user["id"], fields, "a user")
    return get(db, user["id"])


def delete(db: Database, user_id: str) -> dict[str, Any]:
    user = get(db, user_id)
    with db.transaction() as conn:
        conn.execute("DELETE FROM users WHERE id = ?", (user["id"],))
        conn.execute("DELETE FROM sessions WHERE user_id = ?", (user["id"],))  # store.sessions
    return user


def rotate_token(db: Database, user_id: str) -> tuple[dict[str, Any], str]:
    """A new token; the old one and every session opened with it stop working at once."""
    user = get(db, user_id)
    token = new_token()
    with db.transaction() as conn:
        conn.execute("UPDATE users SET token_hash = ? WHERE id = ?", (token_hash(token), user["id"]))
        conn.execute("DELETE FROM sessions WHERE user_id = ?", (user["id"],))  # store.sessions
    return user, token


def by_token(db: Database, token: str) -> dict[str, Any] | None:
    """The user holding ``token``, or None. A lookup by hash leaks no timing about the token."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        return None
    row = db.one("SELECT * FROM users WHERE token_hash = ?", (token_hash(token),))
    return row_to_dict(row) if row is not None else None


def session_material(db: Database, user_id: str) -> tuple[dict[str, Any], str] | None:
    """(user, token hash) for checking a session cookie; None if the user is gone."""
    row = db.one("SELECT * FROM users WHERE id = ?", (user_id,))
    if row is None:
        return None
    return row_to_dict(row), str(row["token_hash"])


# -- audit log --------------------------------------------------------------------------------

def record(db: Database, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO audit_log (at, actor, action, target, details) VALUES (?, ?, ?, ?, ?)",
                     (now(), actor, action, target, dumps(details or {})))


def audit_entries(db: Database, *, actor: str | None = None, action: str | None = None, limit: int = 100,
                  offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    where, params = [], []
    if actor:
        where.append("actor = ?")
        params.append(actor)
    if action:
        where.append(r"action LIKE ? ESCAPE '\'")  # a prefix: "agent." matches every agent action
        params.append(action.replace("\\", "").replace("%", "").replace("_", r"\_") + "%")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    total = db.one(f"SELECT COUNT(*) AS n FROM audit_log {clause}", params)
    rows = db.all(f"SELECT * FROM audit_log {clause} ORDER BY id DESC LIMIT ? OFFSET ?", (*params, limit, offset))
    items = [{**dict(r), "details": json.loads(r["details"])} for r in rows]
    return items, int(total["n"]) if total else 0
