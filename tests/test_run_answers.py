"""Migration 0012: a run's answer lives in run_answers, its row keeps the answer's start and
length, so a run list never reads answers (they can be megabytes each)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import old_database

from agent_manager.errors import ConfigError
from agent_manager.models import OUTPUT_PREVIEW_CHARS
from agent_manager.store import database
from agent_manager.store import runs as run_store
from agent_manager.store.database import Database


def test_an_old_database_keeps_every_answer_and_its_rows_lose_them(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    db = old_database(tmp_path / "old.db", monkeypatch, before=12)
    answers = {"run_big": "é" * 300_000 + " zebra", "run_small": "short", "run_none": None}
    for i, (run_id, answer) in enumerate(answers.items()):
        db.execute("INSERT INTO runs (id, agent_id, agent_name, prompt, status, output, created_at, owner)"
                   " VALUES (?, 'agt_1', 'a', 'p', 'succeeded', ?, ?, 'usr_1')", (run_id, answer, f"2026-01-0{i + 1}"))
    assert 12 in db.migrate()

    columns = {r["name"] for r in db.all("PRAGMA table_info(runs)")}
    assert "output" not in columns and {"output_preview", "output_chars"} <= columns
    for run_id, answer in answers.items():
        run = run_store.get(db, run_id, "usr_1")
        assert run["output"] == answer
        assert run["output_preview"] == (None if answer is None else answer[:OUTPUT_PREVIEW_CHARS])
        assert run["output_chars"] == (None if answer is None else len(answer))
    items, total = run_store.search(db, owner="usr_1")
    assert total == 3 and [r["id"] for r in items] == ["run_none", "run_small", "run_big"]
    assert all("output" not in r for r in items)
    assert items[2]["output_chars"] == 300_006 and items[2]["output_preview"] == "é" * OUTPUT_PREVIEW_CHARS


def test_an_answer_is_written_replaced_cleared_and_pruned_with_its_run(tmp_path: Path) -> None:
    db = Database(tmp_path / "new.db")
    db.migrate()
    db.execute("INSERT INTO agents (id, name, kind, command, args, env, trusted, created_at, updated_at)"
               " VALUES ('agt_1', 'a', 'generic', 'echo', '[]', '{}', 1, 'x', 'x')")
    run_store.create(db, {"id": "run_1", "agent_id": "agt_1", "agent_name": "a", "prompt": "p"})
    assert run_store.get(db, "run_1")["output"] is None
    run_store.update(db, "run_1", output="first")
    run_store.update(db, "run_1", status="succeeded", output="second answer",
                     finished_at="2000-01-01T00:00:00.000Z")
    run = run_store.get(db, "run_1")
    assert (run["output"], run["output_preview"], run["output_chars"]) == ("second answer", "second answer", 13)
    assert run_store.search(db, q="second")[1] == 1
    run_store.update(db, "run_1", output=None)
    assert run_store.get(db, "run_1")["output"] is None
    run_store.update(db, "run_1", output="third")
    assert run_store.prune(db, "2001-01-01T00:00:00.000Z") == 1
    left = db.one("SELECT COUNT(*) AS n FROM run_answers")
    assert left is not None and left["n"] == 0


def test_an_old_answer_with_nul_characters_keeps_its_whole_preview_and_length(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's length() and substr() stop at the first NUL: an agent that printed one (a binary
    tool's output) must not get a preview cut there and a length of the text before it."""
    db = old_database(tmp_path / "old.db", monkeypatch, before=12)
    answer = "hello \x00nul\x01 é" + "漢" * 600
    db.execute("INSERT INTO runs (id, agent_id, agent_name, prompt, status, output, created_at, owner)"
               " VALUES ('run_nul', 'agt_1', 'a', 'p', 'succeeded', ?, 'x', 'usr_1')", (answer,))
    assert 12 in db.migrate()
    run = run_store.get(db, "run_nul")
    assert run["output"] == answer
    assert (run["output_preview"], run["output_chars"]) == (answer[:OUTPUT_PREVIEW_CHARS], len(answer))
    [item], _ = run_store.search(db)
    assert (item["output_preview"], item["output_chars"]) == (answer[:OUTPUT_PREVIEW_CHARS], len(answer))


def test_an_older_release_refuses_a_database_a_newer_one_migrated(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Going back to the release before 0012 would answer 500 to every run read (runs.output is
    gone): it must stop at start with a sentence that says why, and touch nothing."""
    db = Database(tmp_path / "new.db")
    db.migrate()
    every = database.migrations()
    monkeypatch.setattr(database, "migrations", lambda: [m for m in every if m[0] < 12])
    with pytest.raises(ConfigError, match="upgraded by a newer Agent Manager .*migration 12"):
        db.migrate()
    versions = db.all("SELECT version FROM schema_version")
    assert max(r["version"] for r in versions) == every[-1][0]


def test_a_migration_that_fills_the_disk_says_so_and_leaves_the_database_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0012 copies every answer and rewrites the runs table: on a full disk SQLite rolls the
    transaction back itself, and the error must still say "full" (it said "cannot rollback - no
    transaction is active"), with every answer where it was."""
    db = old_database(tmp_path / "old.db", monkeypatch, before=12)
    for i in range(20):
        db.execute("INSERT INTO runs (id, agent_id, agent_name, prompt, status, output, created_at, owner)"
                   " VALUES (?, 'agt_1', 'a', 'p', 'succeeded', ?, 'x', 'usr_1')", (f"run_{i}", f"{i} " * 20_000))
    pages = db.one("PRAGMA page_count")
    assert pages is not None
    db.execute(f"PRAGMA max_page_count = {pages[0] + 20}")  # a disk with 80 KB left
    db.execute("PRAGMA cache_size = 5")  # the transaction spills to the file, as a big one does
    with pytest.raises(ConfigError, match="full"):
        db.migrate()
    assert "output" in {r["name"] for r in db.all("PRAGMA table_info(runs)")}
    assert db.one("SELECT output FROM runs WHERE id = 'run_7'")["output"] == "7 " * 20_000
    assert db.one("SELECT MAX(version) AS v FROM schema_version")["v"] == 11


def test_a_sqlite_too_old_for_the_migrations_is_named_before_anything_is_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python uses the system's SQLite: on Ubuntu 20.04 (3.31) 0012's DROP COLUMN is a syntax
    error; the start must say which SQLite it found and which it needs."""
    db = Database(tmp_path / "a.db")
    monkeypatch.setattr(database.sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(database.sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigError, match=r"SQLite is 3\.31\.1; Agent Manager needs 3\.35\.0 or later"):
        db.migrate()
    assert db.one("SELECT name FROM sqlite_master WHERE name = 'runs'") is None
