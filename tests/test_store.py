"""SQLite store: numbered migrations, transactions, search."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent_manager.errors import Conflict, NotFound
from agent_manager.store import Database
from agent_manager.store import agents as agent_store
from agent_manager.store import conversations as conv_store
from agent_manager.store import runs as run_store
from agent_manager.store.database import migrations


def test_migrations_apply_once_and_record_version(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    applied = db.migrate()
    assert applied == [m[0] for m in migrations()] and applied[0] == 1
    assert db.migrate() == []  # idempotent
    assert db.version() == applied[-1]
    tables = {r["name"] for r in db.all("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"agents", "runs", "run_events", "conversations", "messages", "schema_version"} <= tables


def test_data_survives_reopen(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    db.migrate()
    agent_store.create(db, {"name": "x", "kind": "generic", "command": "echo"})
    db.close()
    again = Database(tmp_path / "a.db")
    again.migrate()
    assert agent_store.get(again, "x")["command"] == "echo"


def test_transaction_rolls_back(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    db.migrate()
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO agents (id, name, kind, command, created_at, updated_at)"
                     " VALUES ('a', 'n', 'generic', 'c', 't', 't')")
        raise RuntimeError("boom")
    assert agent_store.find(db, "n") is None


def test_a_write_that_fills_the_disk_raises_the_disk_full_error(tmp_path: Path) -> None:
    """On a full disk SQLite may roll the whole transaction back itself: the error raised must
    be that one ("database or disk is full"), not a failed second ROLLBACK's "no transaction"."""
    db = Database(tmp_path / "db.sqlite")
    db.migrate()
    pages = db.one("PRAGMA page_count")
    assert pages is not None
    db.execute(f"PRAGMA max_page_count = {pages[0] + 50}")
    with pytest.raises(sqlite3.OperationalError, match="full"), db.transaction() as conn:
        conn.execute("CREATE TABLE big (x TEXT)")
        for _ in range(100):
            conn.execute("INSERT INTO big VALUES (?)", ("x" * 100_000,))
    assert not db.conn.in_transaction
    assert db.one("SELECT name FROM sqlite_master WHERE name = 'big'") is None
    with db.transaction() as conn:  # the next write works
        conn.execute("CREATE TABLE small (x TEXT)")


def test_duplicate_name_is_conflict_and_keeps_original(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    db.migrate()
    agent_store.create(db, {"name": "x", "kind": "generic", "command": "echo"})
    with pytest.raises(Conflict):
        agent_store.create(db, {"name": "x", "kind": "generic", "command": "other"})
    assert agent_store.get(db, "x")["command"] == "echo"
    with pytest.raises(NotFound):
        agent_store.get(db, "nope")


def test_run_search_uses_fts(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    db.migrate()
    for i, (prompt, output) in enumerate([("write a haiku", "cherry blossoms"), ("fix the bug", "patched")]):
        run_store.create(db, {"id": f"r{i}", "agent_id": "a", "agent_name": "a", "prompt": prompt})
        run_store.update(db, f"r{i}", output=output, status="succeeded")
    assert [r["id"] for r in run_store.search(db, q="haiku")[0]] == ["r0"]
    assert [r["id"] for r in run_store.search(db, q="patch")[0]] == ["r1"]  # prefix match on the answer
    assert run_store.search(db, q='"; DROP TABLE runs; --')[0] == []  # odd input is just text
    assert run_store.search(db, status="succeeded")[1] == 2


def test_conversation_messages_searchable(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    db.migrate()
    conv = conv_store.create(db, "", None, None)
    conv_store.add_message(db, conv["id"], "user", "tell me about penguins", None, None)
    assert conv_store.get(db, conv["id"])["title"] == "tell me about penguins"
    assert [c["id"] for c in conv_store.search(db, "penguin")] == [conv["id"]]
    assert conv_store.search(db, "giraffe") == []


def test_a_migration_that_lands_late_is_still_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrations are numbered in parallel and may land out of order: a database that already
    has a later one must still get an earlier one it lacks."""
    from agent_manager.store import database

    first = [(1, "a", "CREATE TABLE a (x)"), (3, "c", "CREATE TABLE c (x)")]
    monkeypatch.setattr(database, "migrations", lambda: first)
    db = Database(tmp_path / "late.db")
    assert db.migrate() == [1, 3]
    monkeypatch.setattr(database, "migrations", lambda: sorted([*first, (2, "b", "CREATE TABLE b (x)")]))
    assert db.migrate() == [2]
    assert db.migrate() == []
    assert db.one("SELECT name FROM sqlite_master WHERE name = 'b'") is not None
    db.close()
