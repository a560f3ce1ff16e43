"""Migration 0010: every run knows its search entry's rowid, so a run's finish, its stderr and
pruning reach that entry by rowid (no scan of the search index), on old databases too."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import old_database

from agent_manager.store import runs as run_store


def test_an_old_database_gets_its_rowids_and_updates_hit_the_right_entry(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    db = old_database(tmp_path / "old.db", monkeypatch, before=10)
    for i in range(50):  # written the old way; entries in another order than the runs
        db.execute("INSERT INTO runs_fts (run_id, prompt, output) VALUES (?, ?, '')",
                   (f"run_{49 - i}", f"prompt {49 - i}"))
    for i in range(50):
        db.execute("INSERT INTO runs (id, agent_id, agent_name, prompt, status, created_at, finished_at)"
                   " VALUES (?, 'agt_1', 'a', ?, 'succeeded', 'x', '2000-01-01T00:00:00.000Z')",
                   (f"run_{i}", f"prompt {i}"))
    assert 10 in db.migrate()

    mismatched = db.one("SELECT COUNT(*) AS n FROM runs JOIN runs_fts ON runs_fts.rowid = runs.search_rowid"
                        " WHERE runs_fts.run_id != runs.id")
    assert mismatched is not None and mismatched["n"] == 0
    run_store.update(db, "run_7", output="zebra answer")
    with db.transaction() as conn:
        for statement, params in run_store.search_statements("run_7", "zebra answer", "giraffe on stderr"):
            conn.execute(statement, params)
    for word in ("zebra", "giraffe"):
        found, total = run_store.search(db, q=word)
        assert total == 1 and found[0]["id"] == "run_7" and "search_rowid" not in found[0]
    new = run_store.create(db, {"id": "run_new", "agent_id": "agt_1", "agent_name": "a", "prompt": "okapi"})
    assert "search_rowid" not in new
    assert [r["id"] for r in run_store.search(db, q="okapi")[0]] == ["run_new"]

    assert run_store.prune(db, "2001-01-01T00:00:00.000Z") == 50
    left = db.one("SELECT COUNT(*) AS n FROM runs_fts")
    assert left is not None and left["n"] == 1  # run_new's entry only
    db.close()
