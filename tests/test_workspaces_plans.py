"""Orchestrations on a project: a branch per step from base + its dependencies' branches,
parallel steps isolated, conflicts named, write_file into the step's worktree, one result
branch merging the leaves, resume reusing succeeded steps' branches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from workspace_helpers import add_project, add_shell_agent, git, make_repo, snapshot, statuses

from agent_manager.service import Service


def step(view: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in view["steps"] if s["id"] == step_id)


async def orchestrate(client: httpx.AsyncClient, service: Service, plan: dict[str, Any],
                      **extra: Any) -> dict[str, Any]:
    r = await client.post("/api/orchestrations", json={"plan": plan, "project": "proj", **extra})
    assert r.status_code == 201, r.text
    await service.orchestrations.wait(r.json()["id"])
    return dict((await client.get(f"/api/orchestrations/{r.json()['id']}")).json())


async def test_parallel_steps_see_only_their_own_change_and_a_join_conflict_is_named(
        client: httpx.AsyncClient, service: Service, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    await add_project(client, repo)
    plan = {"name": "same-file", "steps": [
        {"id": "left", "agent": "sh-agent", "prompt": "Left\nsleep 0.3; echo left > a.txt; cat a.txt"},
        {"id": "right", "agent": "sh-agent", "prompt": "Right\nsleep 0.3; echo right > a.txt; cat a.txt"},
        {"id": "join", "agent": "sh-agent", "prompt": "Join\ncat a.txt", "depends_on": ["left", "right"]}]}
    view = await orchestrate(client, service, plan)
    assert step(view, "left")["output"] == "left" and step(view, "right")["output"] == "right"
    for sid, text in (("left", "left"), ("right", "right")):
        diff = (await client.get(f"/api/runs/{step(view, sid)['run_id']}/diff")).json()
        assert statuses(diff) == {"a.txt": "modified"} and f"+{text}\n" in diff["patch"]
        assert step(view, sid)["workspace"]["branch"] == f"am/{view['id']}/steps/{sid}"
    join = step(view, "join")
    assert join["status"] == "failed" and join["run_id"] is None
    assert "left and right conflict in: a.txt" in join["error"], join["error"]
    assert view["status"] == "failed" and view["workspace"]["branch"] == f"am/{view['id']}/result"


async def test_chain_write_file_result_branch_and_merge(client: httpx.AsyncClient, service: Service,
                                                        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    before = snapshot(repo)
    await add_shell_agent(client)
    await add_project(client, repo)
    plan = {"name": "chain", "steps": [
        {"id": "a", "agent": "sh-agent", "prompt": "Step a\necho from-a > a-out.txt"},
        {"id": "b", "agent": "sh-agent", "prompt": "Step b\ncat a-out.txt > b-out.txt", "depends_on": ["a"]},
        {"id": "note", "action": "write_file", "path": "notes/n.txt", "content": "{{ steps.a.output }}done",
         "depends_on": ["a"]},
        {"id": "side", "agent": "sh-agent", "prompt": "Side\ntest ! -e a-out.txt && echo side > side.txt"}]}
    view = await orchestrate(client, service, plan)
    assert view["status"] == "succeeded", view
    assert statuses((await client.get(f"/api/runs/{step(view, 'b')['run_id']}/diff")).json()) == {
        "b-out.txt": "added"}  # b's own change, on top of a's (which it saw)
    assert step(view, "note")["workspace"]["files_changed"] == 1
    assert snapshot(repo) == before
    diff = (await client.get(f"/api/orchestrations/{view['id']}/diff")).json()
    assert statuses(diff) == {"a-out.txt": "added", "b-out.txt": "added", "notes/n.txt": "added",
                              "side.txt": "added"}
    r = await client.post(f"/api/orchestrations/{view['id']}/merge", json={"strategy": "squash"})
    assert r.status_code == 200, r.text
    assert (repo / "b-out.txt").read_text() == "from-a\n" and (repo / "notes" / "n.txt").read_text() == "done"
    assert git(repo, "log", "-1", "--format=%s") == "Orchestration chain"


async def test_resume_reuses_succeeded_steps_branches(client: httpx.AsyncClient, service: Service,
                                                      tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    flag = tmp_path / "flag"
    await add_shell_agent(client)
    await add_project(client, repo)
    plan = {"name": "resume", "steps": [
        {"id": "a", "agent": "sh-agent", "prompt": "A\necho a > from-a.txt"},
        {"id": "b", "agent": "sh-agent", "prompt": f"B\ntest -e {flag} && cat from-a.txt > from-b.txt",
         "depends_on": ["a"]}]}
    view = await orchestrate(client, service, plan)
    assert view["status"] == "failed"
    first_a = step(view, "a")["workspace"]
    flag.write_text("go")
    r = await client.post(f"/api/orchestrations/{view['id']}/resume")
    assert r.status_code == 200, r.text
    await service.orchestrations.wait(view["id"])
    view = (await client.get(f"/api/orchestrations/{view['id']}")).json()
    assert view["status"] == "succeeded"
    assert step(view, "a")["workspace"] == first_a  # reused, not re-run
    diff = (await client.get(f"/api/orchestrations/{view['id']}/diff")).json()
    assert statuses(diff) == {"from-a.txt": "added", "from-b.txt": "added"}
