"""Projects and per-run workspaces on the local backend: the diff shows exactly the agent's
edits, merge / conflict / discard, and the user's checkout untouched until an explicit merge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
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


async def test_local_run_edits_adds_deletes_renames_and_diff_shows_exactly_that(
        client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    before = snapshot(repo)
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Edit the files\n\nmore detail\n" + EDIT_SCRIPT)
    assert run["status"] == "succeeded", run
    ws = run["workspace"]
    assert ws["branch"] == f"am/{run['id']}" and ws["state"] == "open" and ws["base"] == "main"
    assert ws["files_changed"] == 5 and ws["head_commit"] != ws["base_commit"]
    assert snapshot(repo) == before  # the user's repository is not touched by a run
    diff = (await client.get(f"/api/runs/{run['id']}/diff")).json()
    assert statuses(diff) == EXPECTED
    by_path = {f["path"]: f for f in diff["files"]}
    assert by_path["data.bin"]["binary"] and by_path["renamed.txt"]["old_path"] == "old.txt"
    assert by_path["a.txt"]["insertions"] == 1 and by_path["a.txt"]["deletions"] == 1
    patch = await client.get(f"/api/runs/{run['id']}/diff", headers={"Accept": "text/x-diff"})
    assert patch.headers["content-type"].startswith("text/x-diff") and "GIT binary patch" in patch.text
    # the patch applies to the base and reproduces the run's tree
    check = tmp_path / "check"
    git(tmp_path, "clone", "-q", str(repo), str(check))
    (check / "p.patch").write_text(patch.text)
    git(check, "apply", "--index", "p.patch")
    (check / "p.patch").unlink()
    assert (check / "data.bin").read_bytes() == b"\0\1\2\3" and not (check / "b.txt").exists()
    assert (check / "renamed.txt").exists() and (check / "new.txt").read_text() == "brand new\n"


async def test_commit_message_author_and_agent_commits_are_kept(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    project = await add_project(client, repo)
    script = ("git -c user.name=Bot -c user.email=bot@x commit -q --allow-empty -m 'agent commit'"
              " && echo left > left.txt")
    run = await run_on_project(client, "Keep my commit\nsecond line\n" + script)
    assert run["status"] == "succeeded", run
    repo_copy = Path(str((await client.get(f"/api/projects/{project['name']}")).json()["path"]))
    assert repo_copy == repo
    service_repo = next((tmp_path / "home" / "projects").glob("*.git"))
    log = git(service_repo, "log", "--format=%an|%s", run["workspace"]["branch"])
    assert log.splitlines()[:3] == ["Agent Manager|Keep my commit", "Bot|agent commit", "User|initial"]


async def test_merge_moves_a_clean_checkout_and_second_merge_is_refused(client: httpx.AsyncClient,
                                                                        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Edit\n" + EDIT_SCRIPT)
    first, second = await asyncio.gather(client.post(f"/api/runs/{run['id']}/merge", json={"strategy": "merge"}),
                                         client.post(f"/api/runs/{run['id']}/merge", json={"strategy": "merge"}))
    codes = sorted([first.status_code, second.status_code])
    assert codes == [200, 409], (first.text, second.text)
    merged = first.json() if first.status_code == 200 else second.json()
    assert merged["state"] == "merged"
    assert git(repo, "rev-parse", "HEAD") == merged["merged_commit"]
    assert git(repo, "status", "--porcelain") == ""  # the checkout moved with the branch
    assert (repo / "new.txt").read_text() == "brand new\n" and not (repo / "b.txt").exists()
    assert git(repo, "log", "-1", "--format=%an|%P").startswith("Agent Manager|")
    assert len(git(repo, "log", "-1", "--format=%P").split()) == 2  # a merge commit


async def test_squash_into_branch_not_checked_out(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "dev")
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Work on dev\necho dev > dev.txt", base="dev")
    before_head = git(repo, "rev-parse", "HEAD")
    r = await client.post(f"/api/runs/{run['id']}/merge", json={"strategy": "squash"})
    assert r.status_code == 200, r.text
    assert git(repo, "rev-parse", "HEAD") == before_head and not (repo / "dev.txt").exists()
    assert git(repo, "show", "dev:dev.txt") == "dev"
    assert len(git(repo, "log", "-1", "--format=%P", "dev").split()) == 1  # squashed: one parent


async def test_conflict_is_409_with_paths_and_repository_byte_identical(client: httpx.AsyncClient,
                                                                        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Edit a\nprintf 'agent version\\n' > a.txt")
    (repo / "a.txt").write_text("user version\n")
    git(repo, "commit", "-q", "-am", "user edit")
    before = snapshot(repo)
    r = await client.post(f"/api/runs/{run['id']}/merge", json={})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["details"] == [{"field": "a.txt", "message": "conflict"}]
    assert snapshot(repo) == before
    assert (await client.get(f"/api/runs/{run['id']}")).json()["workspace"]["state"] == "open"


async def test_dirty_checkout_in_files_concerned_is_409_elsewhere_fine(client: httpx.AsyncClient,
                                                                       tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Edit a\nprintf 'agent\\n' > a.txt")
    (repo / "a.txt").write_text("uncommitted user edit\n")
    before = snapshot(repo)
    r = await client.post(f"/api/runs/{run['id']}/merge", json={})
    assert r.status_code == 409 and "uncommitted" in r.json()["error"]["message"], r.text
    assert snapshot(repo) == before
    git(repo, "checkout", "--", "a.txt")
    (repo / "unrelated.txt").write_text("user's own untracked file\n")
    r = await client.post(f"/api/runs/{run['id']}/merge", json={})
    assert r.status_code == 200, r.text
    assert (repo / "a.txt").read_text() == "agent\n" and (repo / "unrelated.txt").exists()


async def test_discard_removes_worktree_and_branch(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    await add_shell_agent(client)
    await add_project(client, repo)
    run = await run_on_project(client, "Edit\n" + EDIT_SCRIPT)
    service_repo = next((tmp_path / "home" / "projects").glob("*.git"))
    worktrees = list((tmp_path / "home" / "worktrees").iterdir())
    assert len(worktrees) == 1 and (worktrees[0] / "new.txt").exists()
    r = await client.post(f"/api/runs/{run['id']}/discard")
    assert r.status_code == 200 and r.json()["state"] == "discarded"
    assert not worktrees[0].exists()
    assert run["workspace"]["branch"] not in git(service_repo, "branch", "--list", "am/*")
    assert (await client.post(f"/api/runs/{run['id']}/merge", json={})).status_code == 409


async def test_conversation_turns_share_one_branch(client: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    # generic agents get the history in front of the prompt: run only its last line
    r = await client.post("/api/agents", json={"name": "last-line", "kind": "generic", "command": "sh",
                                               "args": ["-c", 'eval "$(printf %s "$1" | tail -n 1)"', "sh",
                                                        "{prompt}"]})
    assert r.status_code == 201, r.text
    await add_project(client, repo)
    r = await client.post("/api/conversations", json={"title": "Refactor", "agent": "last-line", "project": "proj"})
    assert r.status_code == 201, r.text
    conv = r.json()
    assert conv["workspace"]["branch"] == f"am/{conv['id']}" and conv["project"] == "proj"
    from helpers import wait_run

    first = (await client.post(f"/api/conversations/{conv['id']}/messages",
                               json={"content": "Turn one\necho one > one.txt"})).json()["run"]
    assert first["workspace"]["branch"] == f"am/{conv['id']}"
    await wait_run(client, first["id"])
    second = (await client.post(f"/api/conversations/{conv['id']}/messages",
                                json={"content": "Turn two\ncat one.txt > two.txt"})).json()["run"]
    done = await wait_run(client, second["id"])
    assert done["status"] == "succeeded" and done["workspace"]["files_changed"] == 2
    diff = (await client.get(f"/api/conversations/{conv['id']}/diff")).json()
    assert statuses(diff) == {"one.txt": "added", "two.txt": "added"}
    service_repo = next((tmp_path / "home" / "projects").glob("*.git"))
    assert git(service_repo, "log", "--format=%s", f"am/{conv['id']}").splitlines()[:2] == ["Turn two", "Turn one"]
    r = await client.post(f"/api/conversations/{conv['id']}/merge", json={"strategy": "squash"})
    assert r.status_code == 200, r.text
    assert (repo / "two.txt").read_text() == "one\n"
    assert git(repo, "log", "-1", "--format=%s") == "Refactor"
    r = await client.post("/api/conversations", json={"title": "x", "project": "proj", "base": "nope"})
    assert r.status_code == 422
