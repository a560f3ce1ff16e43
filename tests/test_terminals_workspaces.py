"""Terminals on git workspaces: a run's or a project's worktree on every backend, git inside, and
the terminal's work committed on the branch when it closes (docs/terminals.md)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import aiohttp
import httpx
from conftest import LiveServer, start_server, stop_server
from fakes.daytona_emulator import DaytonaEmulator
from terminal_client import attach, open_terminal
from terminal_fixtures import FAST, leftovers, until


async def test_terminals_in_project_and_run_workspaces(server: LiveServer, api: httpx.AsyncClient,
                                                       wss: aiohttp.ClientSession, tmp_path: Path) -> None:
    from workspace_helpers import add_project, add_shell_agent, git, make_repo, run_on_project

    repo = make_repo(tmp_path / "repo")
    await add_project(api, repo)
    await add_shell_agent(api)
    run = await run_on_project(api, "echo from-run > run.txt", backend="local")
    # a run's terminal opens in that run's worktree, where its work is
    term = await open_terminal(api, run_id=run["id"])
    sock = await attach(wss, server.url, term["id"])
    await sock.send("cat run.txt; git branch --show-current\n")
    await sock.expect(rf"from-run\s+am/{run['id']}")
    await sock.send("exit\n")
    await sock.control("exit")
    # a project's terminal gets its own worktree and branch; the user's checkout is untouched
    before = git(repo, "status", "--porcelain")
    term = await open_terminal(api, project="proj", backend="local")
    sock = await attach(wss, server.url, term["id"])
    await sock.send("git branch --show-current; echo edited > a.txt; echo made-$((1+1))\n")
    await sock.expect(rf"am/{term['id']}")
    await sock.expect(r"[\r\n]made-2")
    assert (await api.delete(f"/api/terminals/{term['id']}")).status_code == 204
    assert git(repo, "status", "--porcelain") == before and (repo / "a.txt").read_text() == "line 1\nline 2\n"
    (bare,) = (server.home / "projects").glob("*.git")
    log = subprocess.run(["git", "--git-dir", str(bare), "log", "-1", "--format=%s", f"am/{term['id']}"],
                         capture_output=True, text=True)
    assert "Terminal session" in log.stdout, log.stderr  # its edits were committed on its branch at close
    shown = subprocess.run(["git", "--git-dir", str(bare), "show", f"am/{term['id']}:a.txt"],
                           capture_output=True, text=True)
    assert shown.stdout == "edited\n"
    # a discarded run workspace has nothing to open
    assert (await api.post(f"/api/runs/{run['id']}/discard")).status_code == 200
    gone = await api.post("/api/terminals", json={"run_id": run["id"]})
    assert gone.status_code == 409


def branch_file(home: Path, branch: str, path: str) -> str:
    (bare,) = (home / "projects").glob("*.git")
    return subprocess.run(["git", "--git-dir", str(bare), "show", f"{branch}:{path}"],
                          capture_output=True, text=True).stdout


def branch_log(home: Path, branch: str) -> list[str]:
    (bare,) = (home / "projects").glob("*.git")
    return subprocess.run(["git", "--git-dir", str(bare), "log", "--format=%s", branch],
                          capture_output=True, text=True).stdout.splitlines()


async def test_git_works_in_a_sandboxed_terminal_on_a_run_workspace(server: LiveServer, api: httpx.AsyncClient,
                                                                    wss: aiohttp.ClientSession,
                                                                    tmp_path: Path) -> None:
    """The sandboxed terminal gets the run's private git dir (project objects read-only), and what
    is committed or left there lands on the run's branch when the terminal closes."""
    from workspace_helpers import add_project, add_shell_agent, make_repo, run_on_project

    repo = make_repo(tmp_path / "repo")
    await add_project(api, repo)
    await add_shell_agent(api)
    run = await run_on_project(api, "Run first\necho from-run > run.txt", backend="sandbox")
    assert run["status"] == "succeeded", run
    branch = f"am/{run['id']}"
    term = await open_terminal(api, run_id=run["id"])
    assert term["backend"] == "sandbox"  # the run's own backend
    sock = await attach(wss, server.url, term["id"])
    await sock.send("git branch --show-current; git --no-pager log --format=%s -1; echo x >> a.txt; "
                    "git status --short; git --no-pager diff --stat; echo step-$((1+1))\n")
    await sock.expect(r"[\r\n]step-2")
    out = re.sub(r"\x1b\[[0-9;]*m", "", sock.text())  # git colours a terminal's output
    assert branch in out and "Run first" in out and " M a.txt" in out and "1 file changed" in out, out
    # while the terminal is open the workspace is busy: no merge under its feet
    busy = await api.post(f"/api/runs/{run['id']}/merge", json={})
    assert busy.status_code == 409 and f"terminal {term['id']}" in busy.json()["error"]["message"]
    await sock.send("git commit -qam 'committed in the terminal' && echo committed-$((2+3)); "
                    "echo left > left.txt; touch /.agent-manager/objects/x 2>&1 | grep -c Read-only\n")
    await sock.expect(r"[\r\n]committed-5")
    await sock.expect(r"[\r\n]1\r\n")  # the project's objects are read-only inside
    assert (await api.delete(f"/api/terminals/{term['id']}")).status_code == 204
    await sock.control("exit")
    log = branch_log(server.home, branch)
    assert log[:3] == [f"Terminal session {term['id']}", "committed in the terminal", "Run first"], log
    assert branch_file(server.home, branch, "a.txt") == "line 1\nline 2\nx\n"
    assert branch_file(server.home, branch, "left.txt") == "left\n"
    diff = (await api.get(f"/api/runs/{run['id']}/diff")).json()
    assert {f["path"] for f in diff["files"]} == {"a.txt", "run.txt", "left.txt"}
    # a project terminal in the sandbox has the same git
    term = await open_terminal(api, project="proj", backend="sandbox")
    sock = await attach(wss, server.url, term["id"])
    await sock.send("echo p > p.txt && git add p.txt && git commit -qm 'project commit' && echo ok-$((3*3))\n")
    await sock.expect(r"[\r\n]ok-9")
    await sock.send("exit\n")
    await sock.control("exit")
    await until(lambda: "project commit" in branch_log(server.home, f"am/{term['id']}"))
    assert (await api.post(f"/api/runs/{run['id']}/merge", json={})).status_code == 200
    assert (repo / "left.txt").read_text() == "left\n"
    await until(lambda: not leftovers(server.home))


async def test_daytona_terminal_on_a_run_workspace_brings_its_changes_back(
        daytona_server: LiveServer, daytona_emulator: DaytonaEmulator, tmp_path: Path) -> None:
    """A Daytona run's sandbox is gone after the run: a terminal on its workspace gets the branch
    as a bundle (the run's work included), git works, and at close every change comes back."""
    from helpers import wait_run
    from workspace_helpers import add_project, add_shell_agent, make_repo

    srv = daytona_server
    repo = make_repo(tmp_path / "repo")
    async with (httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=60) as api,
                aiohttp.ClientSession(headers=srv.headers) as wss):
        await add_project(api, repo)
        await add_shell_agent(api, backend="daytona")
        created = await api.post("/api/runs", json={"agent": "sh-agent", "project": "proj",
                                                    "prompt": "Remote run\necho from-run > run.txt"})
        assert created.status_code == 201, created.text
        run = await wait_run(api, created.json()["id"], timeout=60)
        assert run["status"] == "succeeded" and run["backend"] == "daytona", run
        assert not daytona_emulator.sandboxes  # the run's own sandbox is not kept
        branch = f"am/{run['id']}"
        term = await open_terminal(api, run_id=run["id"])
        assert term["backend"] == "daytona"
        sock = await attach(wss, srv.url, term["id"])
        await sock.send("cat run.txt; git branch --show-current; git --no-pager log --format=%s -1; "
                        "rm b.txt; printf '\\000\\001' > data.bin; git status --short; echo s-$((4*4))\n")
        await sock.expect(r"[\r\n]s-16")
        out = re.sub(r"\x1b\[[0-9;]*m", "", sock.text())
        assert "from-run" in out and branch in out and "Remote run" in out and " D b.txt" in out, out
        await sock.send("git add -A && git commit -qm 'remote terminal commit' && echo c-$((5*5)); "
                        "echo uncommitted > left.txt; mv old.txt moved.txt; echo d-$((6*6))\n")
        await sock.expect(r"[\r\n]d-36")
        assert "c-25" in sock.text()
        assert (await api.delete(f"/api/terminals/{term['id']}")).status_code == 204
        await sock.control("exit")
        await until(lambda: term["sandbox_id"] in daytona_emulator.deleted)
        log = branch_log(srv.home, branch)
        # the sandbox's commits come back as files (a patch), committed as the terminal's session
        assert log[:2] == [f"Terminal session {term['id']}", "Remote run"], log
        assert branch_file(srv.home, branch, "left.txt") == "uncommitted\n"
        assert branch_file(srv.home, branch, "run.txt") == "from-run\n"
        diff = (await api.get(f"/api/runs/{run['id']}/diff")).json()
        files = {f["path"]: f["status"] for f in diff["files"]}
        assert files == {"run.txt": "added", "b.txt": "deleted", "data.bin": "modified", "left.txt": "added",
                         "moved.txt": "renamed"}, files
        worktree = srv.home / "worktrees" / run["workspace"]["id"]
        assert (worktree / "data.bin").read_bytes() == b"\0\1"
        # a sandbox deleted under the terminal takes its changes with it: said in the audit log
        term = await open_terminal(api, run_id=run["id"])
        sock = await attach(wss, srv.url, term["id"])
        await sock.send("echo lost > lost.txt; echo r-$((7*7))\n")
        await sock.expect(r"[\r\n]r-49")
        await daytona_emulator.remove(term["sandbox_id"])
        await sock.control("exit", timeout=30)
        await until(lambda: not daytona_emulator.sandboxes, timeout=30)
        mine: list[dict[str, object]] = []
        for _ in range(100):
            items = (await api.get("/api/audit", params={"action": "terminal.close"})).json()["items"]
            if mine := [e for e in items if e["target"] == term["id"]]:
                break
            await asyncio.sleep(0.1)
        assert mine and "changes_lost" in mine[0]["details"], mine
        assert branch_file(srv.home, branch, "lost.txt") == ""
        # the workspace is free again: merge works
        assert (await api.post(f"/api/runs/{run['id']}/merge", json={})).status_code == 200
        assert (repo / "left.txt").read_text() == "uncommitted\n" and not (repo / "b.txt").exists()


async def test_work_in_a_sandboxed_terminal_survives_a_service_crash(tmp_path: Path, fake_path: Path) -> None:
    """Terminals hold nothing in the database: after a SIGKILL the next start finds the sandboxed
    terminal's private git dir and its workspace on disk and commits both on the branch."""
    from workspace_helpers import add_project, make_repo

    home, repo = tmp_path / "home", make_repo(tmp_path / "repo")
    srv = start_server(home, env=FAST)
    try:
        async with (httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=30) as api,
                    aiohttp.ClientSession(headers=srv.headers) as wss):
            await add_project(api, repo)
            term = await open_terminal(api, project="proj", backend="sandbox")
            sock = await attach(wss, srv.url, term["id"])
            await sock.send("echo c > c.txt && git add c.txt && git commit -qm 'before the crash' && "
                            "echo u > u.txt && echo ok-$((8*8))\n")
            await sock.expect(r"[\r\n]ok-64")
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
    finally:
        stop_server(srv)
    branch = f"am/{term['id']}"
    assert branch_log(home, branch)[0] == "initial"  # nothing settled yet
    again = start_server(home, env=FAST)
    try:
        await until(lambda: branch_log(home, branch)[0] == "Terminal session interrupted by a restart", 30)
        assert branch_log(home, branch)[:2] == ["Terminal session interrupted by a restart", "before the crash"]
        assert branch_file(home, branch, "u.txt") == "u\n" and branch_file(home, branch, "c.txt") == "c\n"
        await until(lambda: not leftovers(home))
    finally:
        stop_server(again)
