"""Faults: stalled agents, malformed structured output, an unwritable or full data directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import events, wait_gone, wait_run

from agent_manager.errors import ConfigError
from agent_manager.service import Service, check_data_dir
from agent_manager.settings import Settings
from agent_manager.store.database import Database, migrations

QUIET = ("import sys, time\n"
         "print('before', flush=True)\n"
         "time.sleep(float(sys.argv[1]))\n"
         "print('after', flush=True)\n"
         "time.sleep(0.3)\n")


async def _quiet_agent(client: httpx.AsyncClient, marker: str) -> None:
    r = await client.post("/api/agents", json={"name": "quiet", "command": sys.executable,
                                               "args": ["-c", QUIET, "{prompt}", marker]})
    assert r.status_code == 201, r.text


async def test_silent_agent_is_reported_stalled_and_resumes(client: httpx.AsyncClient, service: Service) -> None:
    service.settings.stall_timeout_s = 0.4
    await _quiet_agent(client, "stall-report")
    run = (await client.post("/api/runs", json={"agent": "quiet", "prompt": "1.5"})).json()
    final = await wait_run(client, run["id"])
    assert final["status"] == "succeeded", final
    types = [e["type"] for e in await events(client, run["id"])]
    assert "run.stalled" in types and "run.resumed" in types
    assert types.index("run.stalled") < types.index("run.resumed")
    stalled = next(e for e in await events(client, run["id"]) if e["type"] == "run.stalled")
    assert stalled["data"]["killing"] is False and stalled["data"]["silent_s"] >= 0.4


async def test_stall_kill_ends_the_run(client: httpx.AsyncClient, service: Service) -> None:
    service.settings.stall_timeout_s = 0.4
    service.settings.stall_kill = True
    marker = f"stall-{uuid.uuid4().hex[:8]}"
    await _quiet_agent(client, marker)
    run = (await client.post("/api/runs", json={"agent": "quiet", "prompt": "60"})).json()
    final = await wait_run(client, run["id"])
    assert final["status"] == "failed" and "no output" in final["error"]
    evs = await events(client, run["id"])
    assert any(e["type"] == "run.stalled" and e["data"]["killing"] for e in evs)
    assert evs[-1]["type"] == "run.finished"
    assert wait_gone(marker) == []


async def test_chatty_agent_is_not_stalled(client: httpx.AsyncClient, service: Service) -> None:
    service.settings.stall_timeout_s = 0.5
    service.settings.stall_kill = True
    script = "import time\nfor i in range(8):\n    print(i, flush=True); time.sleep(0.15)\n"
    await client.post("/api/agents", json={"name": "chatty", "command": sys.executable, "args": ["-c", script]})
    run = (await client.post("/api/runs", json={"agent": "chatty", "prompt": "x"})).json()
    final = await wait_run(client, run["id"])
    assert final["status"] == "succeeded"
    assert "run.stalled" not in [e["type"] for e in await events(client, run["id"])]


async def test_garbage_between_structured_events_still_shows(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "gem", "kind": "gemini"})
    run = (await client.post("/api/runs", json={"agent": "gem", "prompt": "GARBAGE TOOL hello"})).json()
    final = await wait_run(client, run["id"])
    assert final["status"] == "succeeded", final
    assert "hello" in final["output"]
    raw = "".join(e["data"]["text"] for e in await events(client, run["id"]) if e["type"] == "output")
    for line in ("Loaded cached credentials.", "this line is { not json", "[1, 2, 3]"):
        assert line in raw


@pytest.mark.parametrize("kind", ["gemini", "claude", "codex"])
async def test_entirely_malformed_structured_output_is_still_visible(client: httpx.AsyncClient, kind: str,
                                                                     tmp_path: Path) -> None:
    script = tmp_path / f"bad-{kind}"
    script.write_text(f"#!{sys.executable}\n"
                      "print('{\"type\": \"broken', flush=True)\n"
                      "print('{\"type\": 5, \"x\": []}', flush=True)\n"
                      "print('[\"not\", \"an\", \"object\"]', flush=True)\n"
                      "print('plain words the user should see', flush=True)\n")
    script.chmod(0o755)
    r = await client.post("/api/agents", json={"name": f"bad-{kind}", "kind": kind, "command": str(script)})
    assert r.status_code == 201, r.text
    run = (await client.post("/api/runs", json={"agent": f"bad-{kind}", "prompt": "x"})).json()
    final = await wait_run(client, run["id"])
    assert final["status"] in ("succeeded", "failed")
    assert not (final["error"] or "").startswith("internal error")
    raw = "".join(e["data"]["text"] for e in await events(client, run["id"]) if e["type"] == "output")
    assert "plain words the user should see" in raw and '{"type": "broken' in raw


# -- the data directory ----------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs (needs root); yields False when mounting is not possible here."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _serve(home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "agent_manager", "serve", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=30)


def test_unwritable_data_dir_refuses_to_start(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    with tmpfs(mount, "ro,size=1m") as mounted:
        home = mount / "home" if mounted else tmp_path / "a-file" / "home"
        if not mounted:
            (tmp_path / "a-file").write_text("not a directory")
        out = _serve(home)
    assert out.returncode != 0
    assert "is not writable" in out.stderr and "AGENT_MANAGER_HOME" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_full_disk_refuses_to_start(tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    with tmpfs(mount, "size=1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root); covered in-process below")
        out = _serve(mount / "home")
    assert out.returncode != 0
    assert "is full" in out.stderr and "KiB free" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_full_disk_check_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home")
    check_data_dir(settings)  # plenty of space

    class Usage:
        total, used, free = 10**9, 10**9 - 4096, 4096

    def full(path: Any) -> Usage:
        return Usage()

    monkeypatch.setattr("agent_manager.service.shutil.disk_usage", full)
    with pytest.raises(ConfigError, match="is full"):
        check_data_dir(settings)


def _old_database(path: Path, answers: int) -> None:
    """A database as the release before migration 0012 left it: answers in runs.output."""
    every = migrations()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("agent_manager.store.database.migrations", lambda: [m for m in every if m[0] < 12])
        db = Database(path)
        db.migrate()
    db.execute("INSERT INTO agents (id, name, kind, command, args, env, trusted, created_at, updated_at)"
               " VALUES ('agt_1', 'a', 'generic', 'echo', '[]', '{}', 1, 'x', 'x')")
    with db.transaction() as conn:
        for i in range(answers):
            conn.execute("INSERT INTO runs (id, agent_id, agent_name, prompt, status, output, created_at)"
                         " VALUES (?, 'agt_1', 'a', 'p', 'succeeded', ?, 'x')", (f"run_{i}", f"{i:04d}" * 25_000))
    db.close()


def test_a_migration_the_disk_cannot_hold_stops_the_start_and_keeps_every_answer(tmp_path: Path) -> None:
    """0012 copies every answer to run_answers and rewrites the runs table (several times the
    answers' size in the WAL): on a disk without that room `serve` says the disk is full in one
    line, and the database is the old one, every answer in place, ready for a start with room."""
    mount = tmp_path / "small"
    with tmpfs(mount, "size=44m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        home = mount / "home"
        home.mkdir()
        _old_database(home / "agent-manager.db", 200)  # 20 MB of answers, 24 MB free
        out = _serve(home)
        assert out.returncode != 0
        assert "cannot migrate the database" in out.stderr and "full" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        db = Database(home / "agent-manager.db")
        assert db.one("SELECT MAX(version) AS v FROM schema_version")["v"] == 11
        assert db.one("SELECT output FROM runs WHERE id = 'run_42'")["output"] == "0042" * 25_000
        db.close()


def test_a_database_a_newer_release_upgraded_stops_the_start(tmp_path: Path) -> None:
    """Going back a release: its code does not know the newer tables, so it refuses to start
    (an older release on 0012's database answered 500 to every run)."""
    home = tmp_path / "home"
    db = Database(home / "agent-manager.db")
    db.migrate()
    db.execute("INSERT INTO schema_version VALUES (9999, '9999_future.sql', 'x')")
    db.close()
    out = _serve(home)
    assert out.returncode != 0
    assert "upgraded by a newer Agent Manager" in out.stderr and "9999" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
