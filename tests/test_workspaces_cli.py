"""The CLI for projects and run review, against a real server process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import LiveServer
from workspace_helpers import EDIT_SCRIPT, git, make_repo


def test_cli_projects_run_with_stat_diff_merge(live_server: LiveServer, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    env = {**os.environ, "AGENT_MANAGER_HOME": str(live_server.home), "AGENT_MANAGER_URL": live_server.url}
    cli = [sys.executable, "-m", "agent_manager"]

    def am(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60)

    assert am("agents", "add", "sh-agent", "--command", "sh", "--arg=-c", "--arg={prompt}").returncode == 0
    added = am("projects", "add", "proj", str(repo))
    assert added.returncode == 0 and "base main" in added.stdout, added.stderr
    assert am("projects", "add", "proj", str(repo)).returncode != 0
    ran = am("run", "sh-agent", "Edit\n" + EDIT_SCRIPT + " && echo done", "--project", "proj")
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.strip().splitlines()
    assert lines[0] == "done"
    assert lines[-1].startswith("am/run_") and "5 file(s) changed" in lines[-1]
    assert any("old.txt => renamed.txt" in line for line in lines)
    run_id = lines[-1].split(":")[0].removeprefix("am/")
    patch = am("runs", "diff", run_id)
    assert patch.returncode == 0 and patch.stdout.startswith("diff --git")
    bad = am("run", "sh-agent", "x", "--project", "proj", "--base", "nope")
    assert bad.returncode != 0 and "base" in bad.stderr
    merged = am("runs", "merge", run_id, "--squash")
    assert merged.returncode == 0, merged.stderr
    assert (repo / "new.txt").exists() and git(repo, "status", "--porcelain") == ""
    again = am("runs", "merge", run_id)
    assert again.returncode != 0 and "already merged" in again.stderr
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\nsteps:\n  - id: one\n    agent: sh-agent\n    prompt: echo 1 > one.txt\n"
                    "  - id: two\n    agent: sh-agent\n    prompt: cat one.txt > two.txt\n    depends_on: [one]\n")
    orchestrated = am("orchestrate", str(plan), "--project", "proj")
    assert orchestrated.returncode == 0, orchestrated.stderr
    assert "(workspace am/orch_" in orchestrated.stderr and "2 file(s) changed" in orchestrated.stdout
    orch_branch = orchestrated.stdout.strip().splitlines()[-1].split(":")[0]
    listed = am("projects", "list")
    assert listed.stdout.startswith("proj\tmain\t3 open"), listed.stdout  # the orchestration and its 2 steps
    assert orch_branch.endswith("/result")
    assert am("projects", "remove", "proj").returncode == 0
    assert am("projects", "list").stdout == ""
