"""Bad input and faults around projects and workspaces: each has a clear outcome, and nothing
but an explicit merge ever writes into the user's repository."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
from conftest import LiveServer, start_server, stop_server
from fastapi import FastAPI
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

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web.app import create_app


async def test_registration_errors(client: httpx.AsyncClient, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    r = await client.post("/api/projects", json={"name": "p", "path": str(plain)})
    assert r.status_code == 422 and "not a git repository" in r.json()["error"]["message"]
    r = await client.post("/api/projects", json={"name": "p", "path": str(tmp_path / "missing")})
    assert r.status_code == 422 and "not a directory" in r.json()["error"]["message"]
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    r = await client.post("/api/projects", json={"name": "p", "path": str(empty)})
    assert r.status_code == 422 and "no commits" in r.json()["error"]["message"]
    repo = make_repo(tmp_path / "repo")
    r = await client.post("/api/projects", json={"name": "p", "path": str(repo), "base": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "base"
    await add_project(client, repo, "p")
    r = await client.post("/api/projects", json={"name": "p", "path": str(repo)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    for bad in ({"name": "q"}, {"name": "q", "path": str(repo), "git_url": "file:///x"},
                {"name": "q", "git_url": "ext::sh -c id"}, {"name": "q", "git_url": "--upload-pack=id"},
                {"name": "../q", "path": str(repo)}):
        r = await client.post("/api/projects", json=bad)
        assert r.status_code == 422, (bad, r.text)
    assert len((await client.get("/api/projects")).json()) == 1
    assert len(list((tmp_path / "home" / "projects").iterdir())) == 1  # failed attempts left nothing


async def test_clone_from_file_url_and_run_on_it(client: httpx.AsyncClient, tmp_path: Path) -> None:
    upstream = make_repo(tmp_path / "upstream")
    before = snapshot(upstream)
    r = await client.post("/api/projects", json={"name": "cloned", "git_url": f"file://{upstream}"})
    assert r.status_code == 201, r.text
    assert r.json()["default_base"] == "main" and r.json()["path"] is None
    await add_shell_agent(client)
    run = await run_on_project(client, "Edit\n" + EDIT_SCRIPT, project="cloned")
    assert statuses((await client.get(f"/api/runs/{run['id']}/diff")).json()) == EXPECTED
    merged = await client.post(f"/api/runs/{run['id']}/merge", json={"strategy": "squash"})
    assert merged.status_code == 200, merged.text
    assert snapshot(upstream) == before  # merged into the service's clone, never pushed


async def test_missing_base_and_unknown_project_are_4xx(client: httpx.AsyncClient, tmp_path: Path) -> None:
    await add_shell_agent(client)
    await add_project(client, make_repo(tmp_path / "repo"))
    r = await client.post("/api/runs", json={"agent": "sh-agent", "prompt": "x", "project": "proj", "base": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "base"
    r = await client.post("/api/runs", json={"agent": "sh-agent", "prompt": "x", "project": "nope"})
    assert r.status_code == 404
    r = await client.post("/api/runs", json={"agent": "sh-agent", "prompt": "x", "project": "proj",
                                             "base": "--output=/tmp/x"})
    assert r.status_code == 422
    assert (await client.get("/api/runs")).json()["total"] == 0
    plain = (await client.post("/api/runs", json={"agent": "sh-agent", "prompt": "true"})).json()
    assert (await client.get(f"/api/runs/{plain['id']}/diff")).status_code == 404


async def test_dirty_user_repository_runs_from_committed_base(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "a.txt").write_text("uncommitted\n")
    (repo / "untracked.txt").write_text("mine\n")
    before = snapshot(repo)
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Look\ncat a.txt && test ! -e untracked.txt && echo x > x.txt")
    assert run["status"] == "succeeded" and run["output"].startswith("line 1"), run
    assert snapshot(repo) == before
    assert statuses((await client.get(f"/api/runs/{run['id']}/diff")).json()) == {"x.txt": "added"}


async def test_local_agent_deleting_git_or_rewriting_history(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Delete git\nrm -rf .git && git init -q && echo x > x.txt")
    assert run["status"] == "succeeded", run
    assert statuses((await client.get(f"/api/runs/{run['id']}/diff")).json()) == {"x.txt": "added"}
    worktree = tmp_path / "home" / "worktrees" / run["workspace"]["id"]
    assert (worktree / ".git").is_file()  # re-linked to the service's repository
    assert git(worktree, "status", "--porcelain") == ""
    script = ("echo mine > mine.txt && git add -A"
              " && git update-ref HEAD $(git commit-tree -m rewritten $(git write-tree))")
    run = await run_on_project(client, "Rewrite\n" + script)
    ws = run["workspace"]
    assert "rewrote" in ws["note"]
    assert git(worktree.parent / ws["id"], "merge-base", "--is-ancestor", ws["base_commit"], ws["head_commit"]) == ""
    assert statuses((await client.get(f"/api/runs/{run['id']}/diff")).json()) == {"mine.txt": "added"}


async def test_worktree_removed_by_hand(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Edit\n" + EDIT_SCRIPT)
    shutil.rmtree(tmp_path / "home" / "worktrees" / run["workspace"]["id"])
    assert statuses((await client.get(f"/api/runs/{run['id']}/diff")).json()) == EXPECTED
    r = await client.post(f"/api/runs/{run['id']}/merge", json={})
    assert r.status_code == 200, r.text
    assert (repo / "new.txt").exists()


async def test_users_use_projects_but_never_register_paths_or_see_others_work(
        settings: Settings, service: Service, tmp_path: Path) -> None:
    app: FastAPI = create_app(settings, service=service)
    transport = httpx.ASGITransport(app=app)
    admin = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                              headers={"Authorization": f"Bearer {app.state.token}"})
    async with admin:
        await add_shell_agent(admin)
        await add_project(admin, make_repo(tmp_path / "repo"))
        run = await run_on_project(admin, "Edit\n" + EDIT_SCRIPT)
        users = []
        for name in ("alice", "bob"):
            r = await admin.post("/api/users", json={"name": name, "trusted": True})
            users.append(httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                           headers={"Authorization": f"Bearer {r.json()['token']}"}))
        alice, bob = users
        async with alice, bob:
            r = await alice.post("/api/projects", json={"name": "mine", "path": str(tmp_path / "repo")})
            assert r.status_code == 403
            r = await alice.post("/api/projects", json={"name": "mine", "git_url": f"file://{tmp_path}/repo"})
            assert r.status_code == 403
            assert (await alice.delete("/api/projects/proj")).status_code == 403
            for path in ("diff", "merge", "discard"):
                method = alice.get if path == "diff" else alice.post
                assert (await method(f"/api/runs/{run['id']}/{path}")).status_code == 404
            r = await alice.post("/api/runs", json={"agent": "sh-agent", "prompt": "Mine\necho a > a.txt",
                                                    "project": "proj"})
            assert r.status_code == 201, r.text
            mine = await wait_run(alice, r.json()["id"])
            assert mine["workspace"]["files_changed"] == 1
            assert (await bob.get(f"/api/runs/{mine['id']}/diff")).status_code == 404
            listed = (await bob.get("/api/projects/proj")).json()
            assert listed["workspaces"] == [] and listed["open_workspaces"] == 0
            assert len((await alice.get("/api/projects/proj")).json()["workspaces"]) == 1


def test_service_killed_mid_run_keeps_a_reviewable_workspace(tmp_path: Path, fake_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    server: LiveServer = start_server(home)
    try:
        c = httpx.Client(base_url=server.url, headers=server.headers, timeout=30)
        c.post("/api/agents", json={"name": "sh-agent", "kind": "generic", "command": "sh",
                                    "args": ["-c", "{prompt}"]}).raise_for_status()
        c.post("/api/projects", json={"name": "proj", "path": str(repo)}).raise_for_status()
        run = c.post("/api/runs", json={"agent": "sh-agent", "project": "proj",
                                        "prompt": "Half done\necho half > half.txt; sleep 60"}).json()
        deadline = time.monotonic() + 20
        worktree = home / "worktrees" / run["workspace"]["id"]
        while not (worktree / "half.txt").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.proc.kill()
        server.proc.wait()
    finally:
        stop_server(server)
    server = start_server(home)
    try:
        c = httpx.Client(base_url=server.url, headers=server.headers, timeout=30)
        deadline = time.monotonic() + 20
        while True:
            got = c.get(f"/api/runs/{run['id']}").json()
            if got["workspace"]["files_changed"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got["status"] == "interrupted" and got["workspace"]["state"] == "open", got
        assert statuses(c.get(f"/api/runs/{run['id']}/diff").json()) == {"half.txt": "added"}
    finally:
        stop_server(server)


async def test_fifty_thousand_files(client: httpx.AsyncClient, tmp_path: Path) -> None:
    """A large repository: registering, branching and diffing stay correct (timings: bench/)."""
    repo = tmp_path / "big"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    stream = ["commit refs/heads/main", "committer U <u@x> 0 +0000", "data 3", "big"]
    for i in range(50_000):
        stream += [f"M 100644 inline d{i % 100}/f{i}.txt", f"data {len(str(i)) + 1}", f"{i}"]
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input="\n".join(stream) + "\n", text=True,
                   check=True)
    git(repo, "reset", "-q", "--soft", "main")  # the user's work tree stays empty: "dirty", allowed
    await add_shell_agent(client)
    await add_project(client, repo, "big")
    run = await run_on_project(client, "Touch\necho changed > d7/f7.txt && rm d8/f8.txt", project="big",
                               timeout=600)  # checking out 50,000 files on a loaded 2-core machine
    assert run["status"] == "succeeded", run
    assert statuses((await client.get(f"/api/runs/{run['id']}/diff")).json()) == {
        "d7/f7.txt": "modified", "d8/f8.txt": "deleted"}


async def test_retention_prunes_only_old_open_workspaces(client: httpx.AsyncClient, service: Service,
                                                         tmp_path: Path) -> None:
    await add_shell_agent(client)
    await add_project(client, make_repo(tmp_path / "repo"))
    old = await run_on_project(client, "Old\necho x > x.txt")
    fresh = await run_on_project(client, "Fresh\necho y > y.txt")
    service.database.execute("UPDATE workspaces SET updated_at = '2020-01-01T00:00:00.000Z' WHERE id = ?",
                             (old["workspace"]["id"],))
    workspaces = service.workspaces
    service.settings.workspace_retention_days = 0
    assert await workspaces.prune() == 0  # 0 keeps everything
    service.settings.workspace_retention_days = 14
    assert await workspaces.prune() == 1
    pruned = (await client.get(f"/api/runs/{old['id']}")).json()["workspace"]
    assert pruned["state"] == "discarded" and "pruned" in pruned["note"]
    assert not (tmp_path / "home" / "worktrees" / old["workspace"]["id"]).exists()
    assert (await client.get(f"/api/runs/{fresh['id']}")).json()["workspace"]["state"] == "open"


async def test_removing_a_project_leaves_the_user_repository_and_runs_readable(client: httpx.AsyncClient,
                                                                             tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    before = snapshot(repo)
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Edit\n" + EDIT_SCRIPT)
    assert (await client.delete("/api/projects/proj")).status_code == 204
    assert snapshot(repo) == before
    assert list((tmp_path / "home" / "projects").iterdir()) == []
    assert not (tmp_path / "home" / "worktrees" / run["workspace"]["id"]).exists()
    got = await client.get(f"/api/runs/{run['id']}")
    assert got.status_code == 200 and got.json()["workspace"] is None
    assert (await client.get(f"/api/runs/{run['id']}/diff")).status_code == 404
    assert (await client.get("/api/projects/proj")).status_code == 404
