"""Conversations and their messages."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agent_manager.errors import NotFound
from agent_manager.store.database import Database, Queryable, dumps, new_id, now
from agent_manager.store.runs import fts_query


def _conv(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data["sessions"] = json.loads(data["sessions"])
    return data


def create(db: Database, title: str, agent_id: str | None, owner: str | None) -> dict[str, Any]:
    stamp = now()
    conv_id = new_id("conv")
    with db.transaction() as conn:
        conn.execute("INSERT INTO conversations (id, title, agent_id, owner, created_at, updated_at)"
                     " VALUES (?, ?, ?, ?, ?, ?)", (conv_id, title, agent_id, owner, stamp, stamp))
    return get(db, conv_id)


def get(db: Database, conv_id: str, owner: str | None = None) -> dict[str, Any]:
    row = db.one("SELECT * FROM conversations WHERE id = ?", (conv_id,))
    if row is None or (owner is not None and row["owner"] != owner):
        raise NotFound(f"conversation {conv_id!r} not found")
    return _conv(row)


def search(db: Queryable, q: str | None = None, owner: str | None = None, limit: int = 50,
           offset: int = 0) -> list[dict[str, Any]]:
    where, params = [], []
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    if q and fts_query(q):
        where.append("(id IN (SELECT conversation_id FROM messages_fts WHERE messages_fts MATCH ?)"
                     " OR title LIKE ?)")
        params.extend([fts_query(q), f"%{q}%"])
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = db.all(f"SELECT * FROM conversations {clause} ORDER BY updated_at DESC LIMIT ? OFFSET ?",
                  (*params, limit, offset))
    return [_conv(r) for r in rows]


def messages(db: Database, conv_id: str, last: int | None = None) -> list[dict[str, Any]]:
    if last is None:
        rows = db.all("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conv_id,))
    else:
        rows = db.all("SELECT * FROM (SELECT * FROM messages WHERE conversation_id = ? ORDER BY id DESC"
                      " LIMIT ?) ORDER BY id", (conv_id, last))
    return [dict(r) for r in rows]


def add_message(db: Database, conv_id: str, role: str, content: str, agent_id: str | None,
                run_id: str | None) -> dict[str, Any]:
    stamp = now()
    with db.transaction() as conn:
        cur = conn.execute("INSERT INTO messages (conversation_id, role, content, agent_id, run_id, created_at)"
                           " VALUES (?, ?, ?, ?, ?, ?)", (conv_id, role, content, agent_id, run_id, stamp))
        conn.execute("INSERT INTO messages_fts (rowid, conversation_id, content) VALUES (?, ?, ?)",
                     (cur.lastrowid, conv_id, content))
        conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (stamp, conv_id))
        if role == "user":
            conn.execute("UPDATE conversations SET title = substr(?, 1, 80) WHERE id = ? AND title = ''",
                         (content.strip().splitlines()[0] if content.strip() else "", conv_id))
    row = db.one("SELECT * FROM messages WHERE id = ?", (cur.lastrowid,))
    assert row is not None
    return dict(row)


def set_session(db: Database, conv_id: str, agent_id: str, session_id: str) -> None:
    conv = get(db, conv_id)
    sessions = {**conv["sessions"], agent_id: session_id}
    with db.transaction() as conn:
        conn.execute("UPDATE conversations SET sessions = ?, agent_id = ? WHERE id = ?",
                     (dumps(sessions), agent_id, conv_id))
