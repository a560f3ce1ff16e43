"""Run rows and their full-text index."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agent_manager.errors import NotFound
from agent_manager.models import OUTPUT_PREVIEW_CHARS
from agent_manager.store.database import Database, Queryable, dumps, duration, now

# A run's search entry, by rowid: runs_fts.run_id is UNINDEXED, so matching on it scans the index.
SEARCH_ROWID = "(SELECT search_rowid FROM runs WHERE id = ?)"
# A run with its answer, which lives in its own table (0012): a runs row stays small.
WITH_ANSWER = "SELECT runs.*, run_answers.output FROM runs LEFT JOIN run_answers ON run_answers.run_id = runs.id"


def row_to_dict(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    data = dict(row)
    data.pop("search_rowid", None)  # storage detail (where the run's search entry is)
    data["usage"] = json.loads(data["usage"]) if data["usage"] else None
    data["duration_s"] = duration(data["started_at"], data["finished_at"])
    return data


def create(db: Database, record: dict[str, Any]) -> dict[str, Any]:
    record = {"status": "queued", "created_at": now(), **record}
    with db.transaction() as conn:
        # The run keeps its search entry's rowid: later updates find the entry by it (0010).
        entry = conn.execute("INSERT INTO runs_fts (run_id, prompt, output) VALUES (?, ?, '')",
                             (record["id"], record["prompt"]))
        record["search_rowid"] = entry.lastrowid
        cols = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        conn.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(record.values()))
    return get(db, record["id"])


def get(db: Queryable, run_id: str, owner: str | None = None) -> dict[str, Any]:
    row = db.one(f"{WITH_ANSWER} WHERE runs.id = ?", (run_id,))
    if row is None or (owner is not None and row["owner"] != owner):
        raise NotFound(f"run {run_id!r} not found")
    return row_to_dict(row)


def update_statements(run_id: str, search: bool = True, **changes: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements of ``update``, for a caller that commits them with something else.
    ``search=False`` leaves a changed ``output`` out of the search index (see ``search_statements``).
    The answer (``output``) goes to run_answers; the row keeps its start and length."""
    if "usage" in changes and changes["usage"] is not None:
        changes["usage"] = dumps(changes["usage"])
    statements: list[tuple[str, tuple[Any, ...]]] = []
    if "output" in changes:
        output = changes.pop("output")
        changes["output_preview"] = None if output is None else output[:OUTPUT_PREVIEW_CHARS]
        changes["output_chars"] = None if output is None else len(output)
        statements.append(("DELETE FROM run_answers WHERE run_id = ?", (run_id,)) if output is None else (
            "INSERT INTO run_answers (run_id, output) VALUES (?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET output = excluded.output", (run_id, output)))
        if search:
            statements += search_statements(run_id, output)
    assignments = ", ".join(f"{k} = ?" for k in changes)
    statements.insert(0, (f"UPDATE runs SET {assignments} WHERE id = ?", (*changes.values(), run_id)))
    return statements


def search_statements(run_id: str, output: str | None, stderr: str = "") -> list[tuple[str, tuple[Any, ...]]]:
    """Index a finished run's answer (and what it wrote to stderr, so it is findable by that too).
    Tokenizing a long answer costs milliseconds: the run manager hands this to the event writer
    thread instead of committing it on the event loop with the run's final row."""
    text = (output or "") + (f"\n{stderr}" if stderr.strip() else "")
    return [(f"UPDATE runs_fts SET output = ? WHERE rowid = {SEARCH_ROWID}", (text, run_id))]


def update(db: Database, run_id: str, **changes: Any) -> None:
    with db.transaction() as conn:
        for statement, params in update_statements(run_id, **changes):
            conn.execute(statement, params)


def fts_query(text: str) -> str:
    """Turn user text into a safe FTS5 query: every word must match, as a prefix."""
    words = [w.replace('"', '""') for w in text.split() if w.strip()]
    return " ".join(f'"{w}"*' for w in words)


def _summary_object(db: Queryable) -> str:
    """A run in a list as one JSON object: its row, which has its answer's start and length but
    not the answer (run_answers). The columns are asked of this database each time (one row, one
    step): a cached list would outlive a migration."""
    row = db.one("SELECT group_concat(name, ',') AS names FROM pragma_table_info('runs')")
    names = str(row["names"]).split(",") if row else []
    fields = [f"'{n}', runs.{n}" for n in names] + ["'_rowid', runs.rowid"]
    return f"json_object({', '.join(fields)})"


def search(db: Queryable, *, agent_id: str | None = None, status: str | None = None, q: str | None = None,
           owner: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """A page of runs, newest first, and how many match.

    Why one statement that returns the page as one JSON array: it runs in the read pool, and
    Python's sqlite3 gives the GIL up around every step (every row) and takes it back after.
    While the event loop is busy, each take waited up to a switch interval, so a page of fifty
    rows took 20-40 ms during 200 chatty runs for about one of work. Here it is taken back once.
    """
    where, params = [], []
    if agent_id:
        where.append("runs.agent_id = ?")
        params.append(agent_id)
    if status:
        where.append("runs.status = ?")
        params.append(status)
    if owner is not None:
        where.append("runs.owner = ?")
        params.append(owner)
    matching = bool(q and fts_query(q))
    if matching:
        where.append("runs.id IN (SELECT run_id FROM runs_fts WHERE runs_fts MATCH ?)")
        params.append(fts_query(q or ""))
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    page = f"SELECT {_summary_object(db)} AS run{{extra}} FROM runs {clause} ORDER BY created_at DESC, rowid DESC " \
           "LIMIT ? OFFSET ?"
    if matching:
        # One full-text match for the page and the total (it is the expensive part): the window
        # count sees every match before LIMIT. An empty page still needs its own count.
        row = db.one(f"SELECT json_group_array(json(run)) AS page, MAX(matches) AS total "
                     f"FROM ({page.format(extra=', COUNT(*) OVER () AS matches')})", (*params, limit, offset))
        if row is None or row["total"] is None:
            row = db.one(f"SELECT '[]' AS page, COUNT(*) AS total FROM runs {clause}", params)
    else:
        row = db.one(f"SELECT (SELECT json_group_array(json(run)) FROM ({page.format(extra='')})) AS page, "
                     f"(SELECT COUNT(*) FROM runs {clause}) AS total", (*params, limit, offset, *params))
    assert row is not None
    items = json.loads(row["page"])
    # json_group_array's order is not promised: the page's order is restored here.
    items.sort(key=lambda item: (item["created_at"], item.pop("_rowid")), reverse=True)
    return [row_to_dict(item) for item in items], int(row["total"] or 0)


def history_size(db: Queryable) -> int:
    """How many runs there may be (the highest rowid: an upper bound, found in the index at once)."""
    row = db.one("SELECT MAX(rowid) AS n FROM runs")
    return int(row["n"] or 0) if row else 0


def unfinished(db: Database) -> list[dict[str, Any]]:
    return [row_to_dict(r) for r in db.all(f"{WITH_ANSWER} WHERE runs.status IN ('queued', 'running')")]


def last_heard(db: Database, run_id: str) -> str | None:
    """When the run last recorded anything (its newest event): after a crash, the best estimate
    of when it stopped — the next start may come days later."""
    row = db.one("SELECT MAX(created_at) AS at FROM run_events WHERE run_id = ?", (run_id,))
    return row["at"] if row and row["at"] else None


def last_usage(db: Database, conversation_id: str, agent_id: str, session_id: str) -> dict[str, Any] | None:
    """The usage of the newest run that continued ``session_id`` in this conversation: what a
    CLI reporting running session totals (Codex) needs to report the next turn on its own."""
    row = db.one("SELECT usage FROM runs WHERE conversation_id = ? AND agent_id = ? AND session_id = ?"
                 " AND usage IS NOT NULL ORDER BY created_at DESC, rowid DESC LIMIT 1",
                 (conversation_id, agent_id, session_id))
    return json.loads(row["usage"]) if row and row["usage"] else None


def prune(db: Database, finished_before: str, batch: int = 500) -> int:
    """Delete finished runs (row, events, search entry) that finished before the timestamp.

    Chat messages keep their text (they only lose the link to the run); orchestration steps
    keep their stored output. Done in batches so the write lock is never held for long.
    """
    deleted = 0
    while True:
        with db.transaction() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?"
                " AND status NOT IN ('queued', 'running') LIMIT ?", (finished_before, batch))]
            if not ids:
                return deleted
            marks = ", ".join("?" for _ in ids)
            conn.execute(f"DELETE FROM run_events WHERE run_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM runs_fts WHERE rowid IN (SELECT search_rowid FROM runs WHERE id IN ({marks}))",
                         ids)
            conn.execute(f"DELETE FROM run_answers WHERE run_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM runs WHERE id IN ({marks})", ids)
        if db.output_files is not None:  # after the commit: a crash in between leaves files, never rows without
            db.output_files.remove(ids)
        deleted += len(ids)
