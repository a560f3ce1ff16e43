"""Workspaces on the bubblewrap sandbox: the worktree is /workspace, git works inside through a
private git dir, and nothing of the project's repository is writable from inside."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from workspace_helpers import (
    EDIT_SCRIPT,
    EXPECTED,
    add_project,
    add_shell_agent,
    git,
    make_repo,
    run_on_project,
    snapshot,
    statuses,
)

from agent_manager.service import Service


@pytest.fixture(autouse=True)
async def needs_bwrap(service: Service) -> None:
    availability = await service.executors["sandbox"].available()
    if not availability.ok:
        pytest.skip(availability.reason)


async def test_sandbox_run_edits_and_diff_shows_exactly_that(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    before = snapshot(repo)
    await add_shell_agent(client, backend="sandbox")
    await add_project(client, repo)
    script = f"test \"$PWD\" = /workspace && git status --porcelain && {EDIT_SCRIPT}"
    run = await run_on_project(client, "Edit in the sandbox\n" + script)
    assert run["status"] == "succeeded" and run["backend"] == "sandbox", run
    diff = (await client.get(f"/api/runs/{run['id']}/diff")).json()
    assert statuses(diff) == EXPECTED
    assert snapshot(repo) == before


async def test_sandbox_agent_commits_come_back_and_repository_is_read_only(client: httpx.AsyncClient,
                                                                          tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client, backend="sandbox")
    await add_project(client, repo)
    service_repo = next((tmp_path / "home" / "projects").glob("*.git"))
    config_before = (service_repo / "config").read_bytes()
    attacks = [
        f"echo '[core] fsmonitor = touch /tmp/pwned' >> {service_repo}/config",
        "echo evil > /.agent-manager/objects/evil",
        "echo '#!/bin/sh' > /workspace/.git",
        f"echo evil > {repo}/.git/config",
    ]
    guarded = " ; ".join(f"if {a} 2>/dev/null; then echo WROTE; fi" for a in attacks)
    script = (f"{guarded}; echo one > one.txt && git add one.txt && git commit -q -m 'sandbox commit'"
              " && echo two > two.txt")
    run = await run_on_project(client, "Commit inside\n" + script)
    assert run["status"] == "succeeded", run
    assert "WROTE" not in (run["output"] or ""), run["output"]
    assert (service_repo / "config").read_bytes() == config_before
    log = git(service_repo, "log", "--format=%an|%s", run["workspace"]["branch"]).splitlines()
    assert log[:3] == ["Agent Manager|Commit inside", "Agent Manager|sandbox commit", "User|initial"]
    diff = (await client.get(f"/api/runs/{run['id']}/diff")).json()
    assert statuses(diff) == {"one.txt": "added", "two.txt": "added"}


async def test_sandbox_agent_rewriting_history_keeps_only_its_files(client: httpx.AsyncClient,
                                                                   tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client, backend="sandbox")
    await add_project(client, repo)
    script = ("echo mine > mine.txt && git add -A"
              " && git update-ref HEAD $(git commit-tree -m rewritten $(git write-tree))")
    run = await run_on_project(client, "Rewrite\n" + script)
    assert run["status"] == "succeeded", run
    ws = run["workspace"]
    service_repo = next((tmp_path / "home" / "projects").glob("*.git"))
    assert git(service_repo, "merge-base", "--is-ancestor", ws["base_commit"], ws["head_commit"]) == ""
    assert "rewrote" in ws.get("note", "")
    diff = (await client.get(f"/api/runs/{run['id']}/diff")).json()
    assert statuses(diff) == {"mine.txt": "added"}


async def test_sandbox_cannot_smuggle_objects_of_other_host_repositories(client: httpx.AsyncClient,
                                                                         tmp_path: Path) -> None:
    """The agent names another repository of this host in its alternates and commits a tree it
    only knows the id of: the service never reads that repository, the files still count."""
    secret = make_repo(tmp_path / "secret")
    (secret / "secret.txt").write_text("top secret\n")
    git(secret, "add", "secret.txt")
    git(secret, "commit", "-q", "-m", "secret")
    tree = git(secret, "rev-parse", "HEAD^{tree}")
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client, backend="sandbox")
    await add_project(client, repo)
    # The commit is written first: its object directory (a random two hex digits) may be one the
    # links below would point at the host repository, which is not there inside the sandbox.
    script = (f"c=$(printf 'tree {tree}\\nparent %s\\nauthor a <a> 0 +0000\\ncommitter a <a> 0 +0000\\n\\nx\\n'"
              " $(git rev-parse HEAD) | git hash-object -t commit -w --stdin --literally)"
              f" && echo {secret}/.git/objects >> /.agent-manager/git/objects/info/alternates"
              + "".join(f" && ln -s {d} /.agent-manager/git/objects/{d.name}"
                        for d in (secret / ".git" / "objects").iterdir() if len(d.name) == 2) +
              " && git update-ref HEAD $c && echo mine > mine.txt")
    run = await run_on_project(client, "Smuggle\n" + script)
    assert run["status"] == "succeeded", (run["error"], run["output"])
    service_repo = next((tmp_path / "home" / "projects").glob("*.git"))
    assert subprocess.run(["git", "cat-file", "-e", tree], cwd=service_repo).returncode != 0
    ws = run["workspace"]
    assert "rewrote" in ws["note"]
    assert statuses((await client.get(f"/api/runs/{run['id']}/diff")).json()) == {"mine.txt": "added"}
