"""Issue 9, the attacker's pass over what landed (helper 9c): holes found by attacking a real
service as an untrusted and a trusted non-admin user, each proved here and then closed.

* A trusted non-admin user's terminal was a shell as the service's own OS user (root in CI):
  ``cat <data dir>/admin-token`` gave them the admin token. Terminals now follow a run's rules.
* An untrusted user merged their isolated run's branch into the admin's checkout on the host
  (a project registered by path): a Makefile written in the sandbox landed in the admin's
  repository unreviewed. That merge is now the trusted users' and the admin's.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from conftest import in_process_client, running_service, start_server, stop_server
from helpers import wait_run
from terminal_client import attach
from workspace_helpers import add_project, add_shell_agent, git, make_repo

from agent_manager.settings import Settings
from agent_manager.workdirs import lookup_user

ROOT = os.geteuid() == 0
RUN_AS = "games"  # an unprivileged account other than the sandbox's host user (nobody)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="am-9c-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _shell_says(url: str, headers: dict[str, str], terminal_id: str, home: Path) -> str:
    """Type ``id -u`` and ``cat admin-token`` into the terminal; what it printed."""
    async with aiohttp.ClientSession(headers=headers) as session:
        sock = await attach(session, url, terminal_id)
        await sock.send(f"echo uid=$(id -u)=; cat {home}/admin-token; echo done-$((6*7))\n")
        await sock.expect(r"done-42", timeout=30)
        await sock.close()
    return sock.text()


async def _user(admin: httpx.AsyncClient, name: str, trusted: bool) -> dict[str, str]:
    r = await admin.post("/api/users", json={"name": name, "trusted": trusted})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.mark.skipif(not ROOT, reason="the service's own user is only worth stealing when it is root")
async def test_trusted_users_terminal_is_never_the_services_own_user(open_tmp: Path, fake_path: Path) -> None:
    home = open_tmp / "home"
    server = start_server(home, env={"AGENT_MANAGER_KILL_GRACE_S": "0.3"})
    try:
        token = server.token
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as admin:
            trusty = await _user(admin, "trusty", True)
            for body in ({}, {"backend": "local"}):
                r = await admin.post("/api/terminals", json=body, headers=trusty)
                assert r.status_code == 201, r.text
                term = r.json()
                said = await _shell_says(server.url, trusty, term["id"], home)
                assert token not in said, (body, term)
                uid = re.search(r"uid=(\d+)=", said)
                assert uid and uid.group(1) != "0", said
                assert term["backend"] == "sandbox", term  # no run-as user on this host: isolated
                assert "non-admin" in term["route_reason"], term["route_reason"]
                await admin.delete(f"/api/terminals/{term['id']}")
            # the admin's own terminal is still the service's user (sh: root's .bashrc may be slow)
            r = await admin.post("/api/agents", json={"name": "shell", "kind": "generic", "command": "/bin/sh",
                                                      "args": ["-i"]})
            assert r.status_code == 201, r.text
            r = await admin.post("/api/terminals", json={"agent": "shell", "backend": "local"})
            said = await _shell_says(server.url, server.headers, r.json()["id"], home)
            assert token in said
            await admin.delete(f"/api/terminals/{r.json()['id']}")
    finally:
        stop_server(server)


@pytest.mark.skipif(not ROOT or lookup_user(RUN_AS) is None, reason="needs root and a run-as user")
async def test_trusted_users_local_terminal_runs_as_run_as_user(open_tmp: Path, fake_path: Path) -> None:
    home = open_tmp / "home"
    server = start_server(home, env={"AGENT_MANAGER_KILL_GRACE_S": "0.3", "AGENT_MANAGER_RUN_AS_USER": RUN_AS,
                                     "AGENT_MANAGER_WORKSPACES_DIR": str(open_tmp / "ws")})
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as admin:
            r = await admin.post("/api/agents", json={"name": "shell", "kind": "generic", "command": "/bin/sh",
                                                      "args": ["-i"]})
            assert r.status_code == 201, r.text
            trusty = await _user(admin, "trusty", True)
            r = await admin.post("/api/terminals", json={"agent": "shell", "backend": "local"}, headers=trusty)
            assert r.status_code == 201, r.text
            term = r.json()
            assert term["backend"] == "local" and f"'{RUN_AS}'" in term["route_reason"], term
            said = await _shell_says(server.url, trusty, term["id"], home)
            user = lookup_user(RUN_AS)
            assert user is not None and f"uid={user.uid}=" in said, said
            assert server.token not in said and "Permission denied" in said, said
            await admin.delete(f"/api/terminals/{term['id']}")
    finally:
        stop_server(server)


async def test_untrusted_user_cannot_merge_into_a_checkout_on_the_host(tmp_path: Path, fake_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kill_grace_s=0.3, stream_close_grace_s=0.5)
    repo = make_repo(tmp_path / "repo")
    before = (repo / "a.txt").read_text()
    async with running_service(settings) as svc, in_process_client(settings, svc) as admin:
        await add_project(admin, repo)
        await add_shell_agent(admin)
        mallory = await _user(admin, "mallory", False)
        trusty = await _user(admin, "trusty", True)
        runs = {}
        for who, headers in (("mallory", mallory), ("trusty", trusty)):
            r = await admin.post("/api/runs", headers=headers, json={
                "agent": "sh-agent", "project": "proj", "prompt": f"echo {who} > a.txt"})
            assert r.status_code == 201, r.text
            runs[who] = r.json()["id"]
        for who in runs:
            run = await wait_run(admin, runs[who], timeout=60)
            assert run["status"] == "succeeded", run
        # the untrusted user's work stays on its branch: a patch to read, not a write to the host
        r = await admin.post(f"/api/runs/{runs['mallory']}/merge", headers=mallory)
        assert r.status_code == 403, r.text
        assert (repo / "a.txt").read_text() == before
        patch = await admin.get(f"/api/runs/{runs['mallory']}/diff?format=patch", headers=mallory)
        assert patch.status_code == 200 and "+mallory" in patch.text
        # a trusted user (who may write files where agents work) and the admin may merge
        r = await admin.post(f"/api/runs/{runs['trusty']}/merge", headers=trusty)
        assert r.status_code == 200, r.text
        assert (repo / "a.txt").read_text() == "trusty\n"
        assert git(repo, "status", "--porcelain") == ""
        r = await admin.post(f"/api/runs/{runs['mallory']}/merge")
        assert r.status_code in (200, 409), r.text  # the admin decides (409: conflicts with trusty's)



@pytest.mark.skipif(not ROOT, reason="only a root service hands workspaces over to another OS user")
async def test_an_admin_chosen_working_dir_keeps_its_owners(tmp_path: Path, fake_path: Path) -> None:
    """The sandbox handed every workspace over to its host user with a recursive chown — an
    agent's ``working_dir`` too, so the admin's directory (a 0600 key in it) became nobody's.
    Only the service's own workspaces are handed over now."""
    settings = Settings(home=tmp_path / "home", kill_grace_s=0.3, stream_close_grace_s=0.5)
    chosen = tmp_path / "admin-project"
    (chosen / ".ssh").mkdir(parents=True)
    key = chosen / ".ssh" / "id_ed25519"
    key.write_text("PRIVATE KEY\n")
    key.chmod(0o600)
    async with running_service(settings) as svc, in_process_client(settings, svc) as admin:
        for name, extra in (("chosen", {"working_dir": str(chosen)}), ("own", {})):
            r = await admin.post("/api/agents", json={"name": name, "kind": "generic", "command": "sh",
                                                      "args": ["-c", "{prompt}"], **extra})
            assert r.status_code == 201, r.text
        mallory = await _user(admin, "mallory", False)
        runs = {}
        for name in ("chosen", "own"):
            r = await admin.post("/api/runs", headers=mallory, json={
                "agent": name, "prompt": "echo written > out.txt && echo ok"})
            assert r.status_code == 201, r.text
            runs[name] = await wait_run(admin, r.json()["id"], timeout=60)
        assert runs["own"]["status"] == "succeeded" and "ok" in runs["own"]["output"], runs["own"]
        assert runs["chosen"]["backend"] == "sandbox"
    for path in (chosen, chosen / ".ssh", key):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (0, 0), (path, info.st_uid)
    assert key.stat().st_mode & 0o777 == 0o600
