"""Workspaces on Daytona, through the real SDK and the emulator: the base goes in as a bundle,
the agent's changes (committed or not, binary, deletions, renames) come back as a binary patch
and are committed on the run's branch; nothing is lost when the sandbox is deleted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import in_process_client, running_service
from fakes.daytona_emulator import DaytonaEmulator
from helpers import wait_run
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

from agent_manager.settings import Settings


@pytest.fixture
async def cloud(daytona_settings: Settings, fake_path: object) -> AsyncIterator[httpx.AsyncClient]:
    async with running_service(daytona_settings) as svc, in_process_client(daytona_settings, svc) as c:
        yield c


async def test_daytona_run_changes_come_back_exactly(cloud: httpx.AsyncClient, daytona_emulator: DaytonaEmulator,
                                                     tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    before = snapshot(repo)
    await add_shell_agent(cloud, backend="daytona")
    await add_project(cloud, repo)
    script = ("git log --oneline | grep -q initial && echo one > committed.txt && git add -A"
              " && git commit -q -m 'agent commit' && " + EDIT_SCRIPT)
    run = await run_on_project(cloud, "Edit remotely\n" + script)
    assert run["status"] == "succeeded" and run["backend"] == "daytona", (run["error"], run["output"])
    assert not daytona_emulator.sandboxes  # deleted, and nothing lost
    diff = (await cloud.get(f"/api/runs/{run['id']}/diff")).json()
    assert statuses(diff) == {**EXPECTED, "committed.txt": "added"}
    by_path = {f["path"]: f for f in diff["files"]}
    assert by_path["data.bin"]["binary"] and by_path["renamed.txt"]["old_path"] == "old.txt"
    worktree = tmp_path / "home" / "worktrees" / run["workspace"]["id"]
    assert (worktree / "data.bin").read_bytes() == b"\0\1\2\3" and not (worktree / "b.txt").exists()
    assert git(worktree, "status", "--porcelain") == ""
    assert snapshot(repo) == before
    r = await cloud.post(f"/api/runs/{run['id']}/merge", json={})
    assert r.status_code == 200, r.text
    assert (repo / "committed.txt").read_text() == "one\n"


async def test_daytona_agent_deleting_its_git_dir_loses_nothing(cloud: httpx.AsyncClient, tmp_path: Path) -> None:
    await add_shell_agent(cloud, backend="daytona")
    await add_project(cloud, make_repo(tmp_path / "repo"))
    run = await run_on_project(cloud, "Wreck git\nrm -rf .git && echo kept > kept.txt")
    assert run["status"] == "succeeded", run
    assert statuses((await cloud.get(f"/api/runs/{run['id']}/diff")).json()) == {"kept.txt": "added"}


async def test_daytona_cancelled_run_still_brings_its_changes_back(cloud: httpx.AsyncClient,
                                                                   daytona_emulator: DaytonaEmulator,
                                                                   tmp_path: Path) -> None:
    await add_shell_agent(cloud, backend="daytona")
    await add_project(cloud, make_repo(tmp_path / "repo"))
    r = await cloud.post("/api/runs", json={"agent": "sh-agent", "project": "proj",
                                            "prompt": "Slow\necho partial > partial.txt; echo started; sleep 60"})
    run_id = r.json()["id"]
    for _ in range(400):
        events = (await cloud.get(f"/api/runs/{run_id}/events")).json()
        if any(e["type"] == "output" and "started" in e["data"]["text"] for e in events):
            break
        import asyncio
        await asyncio.sleep(0.05)
    await cloud.post(f"/api/runs/{run_id}/cancel")
    run = await wait_run(cloud, run_id)
    assert run["status"] == "cancelled"
    assert statuses((await cloud.get(f"/api/runs/{run_id}/diff")).json()) == {"partial.txt": "added"}
    assert not daytona_emulator.sandboxes
