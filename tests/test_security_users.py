"""Issue 9, the trusted-user half: a trusted *non-admin* user tries to read the admin token, the
database, config.toml and the service's environment by every route — a run (auto and
``backend: local``), a chat message, plan steps of every action (agent, shell, write_file), the
planner, the files API — and gets none of them.

Paths covered: the service as root (CI) routing non-admin runs to the sandbox because the
workspace is out of the run-as user's reach; as root with a reachable workspace (local runs as
``run_as_user``); the non-root decision (``is_root`` injected); and a real server started as
``nobody`` (the true non-root path).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import in_process_client, running_service, start_server, stop_server
from helpers import wait_run

from agent_manager.executors.base import Resources
from agent_manager.executors.routing import RouteRequest, route
from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.workdirs import lookup_user

# An unprivileged account other than the sandbox's host user (nobody) for local runs of
# non-admin users; the default run_as_user (agent-manager-run) is not created by the tests.
RUN_AS = "games"

# Reads every secret it can name and prints what it got; also plants links to them in its
# working directory for the files API to be asked about afterwards.
THIEF = ("import os, sys\n"
         "home, pid = sys.argv[1], sys.argv[2]\n"
         "print('uid', os.getuid(), flush=True)\n"
         "for name in ('admin-token', 'agent-manager.db', 'config.toml'):\n"
         "    for how in (os.symlink, os.link):\n"
         "        try:\n"
         "            how(os.path.join(home, name), f'{how.__name__}-{name}')\n"
         "        except OSError:\n"
         "            pass\n"
         "for p in (home + '/admin-token', home + '/agent-manager.db', home + '/config.toml',\n"
         "          f'/proc/{pid}/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ'):\n"
         "    try:\n"
         "        with open(p, 'rb') as fh:\n"
         "            print(p, 'READ', fh.read().decode('latin-1'), flush=True)\n"
         "    except OSError as exc:\n"
         "        print(p, 'DENIED', exc.strerror, flush=True)\n")
TERMINAL = {"succeeded", "failed", "cancelled", "interrupted"}


class Loot:
    """Every response the attacker saw."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, what: str, r: httpx.Response) -> httpx.Response:
        self.texts.append((what, r.text))
        return r

    def leaks(self, secrets: list[str]) -> list[str]:
        return [f"{what}: {secret[:12]}…" for what, text in self.texts for secret in secrets if secret in text]


async def _orchestration(user: httpx.AsyncClient, loot: Loot, plan: dict[str, Any]) -> dict[str, Any]:
    r = loot.add("orchestration", await user.post("/api/orchestrations", json={"plan": plan}))
    assert r.status_code == 201, r.text
    orch_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        view = loot.add("orchestration view", await user.get(f"/api/orchestrations/{orch_id}")).json()
        if view["status"] in TERMINAL:
            break
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.1)
    loot.add("orchestration events", await user.get(f"/api/orchestrations/{orch_id}/events"))
    for step in view["steps"]:
        if step.get("run_id"):
            loot.add("step run", await user.get(f"/api/runs/{step['run_id']}"))
            loot.add("step run events", await user.get(f"/api/runs/{step['run_id']}/events"))
    return dict(view)


async def attack(admin: httpx.AsyncClient, user: httpx.AsyncClient, home: Path, service_pid: int,
                 local_allowed: bool = True) -> tuple[Loot, list[dict[str, Any]]]:
    """Every route a trusted user has to the admin's secrets; returns what they saw and the runs."""
    loot = Loot()
    token_path = str(home / "admin-token")
    for name, command, args in (("thief", "/usr/bin/python3",
                                 ["-c", THIEF, str(home), str(service_pid), "{prompt}"]),
                                ("cat", "cat", ["{prompt}"])):
        r = await admin.post("/api/agents", json={"name": name, "command": command, "args": args})
        assert r.status_code == 201, r.text
    runs: list[dict[str, Any]] = []
    # runs: auto, and explicitly local
    for agent, prompt, backend in (("thief", "x", None), ("cat", token_path, None),
                                   ("thief", "x", "local"), ("cat", token_path, "local")):
        body = {"agent": agent, "prompt": prompt, **({"backend": backend} if backend else {})}
        r = loot.add("run", await user.post("/api/runs", json=body))
        if r.status_code == 403 and not local_allowed:
            continue
        assert r.status_code == 201, r.text
        runs.append(await wait_run(user, r.json()["id"], timeout=60))
    # chat
    conv = loot.add("conversation", await user.post("/api/conversations", json={"agent": "thief"})).json()
    r = loot.add("chat", await user.post(f"/api/conversations/{conv['id']}/messages", json={"content": "hello"}))
    assert r.status_code == 201, r.text
    runs.append(await wait_run(user, r.json()["run"]["id"], timeout=60))
    loot.add("conversation", await user.get(f"/api/conversations/{conv['id']}"))
    # plan steps of every action
    view = await _orchestration(user, loot, {"name": "loot", "steps": [
        {"id": "cat", "action": "shell", "argv": ["cat", token_path]},
        {"id": "env", "action": "shell", "argv": ["cat", f"/proc/{service_pid}/environ"]},
        {"id": "db", "action": "shell", "argv": ["cat", str(home / "agent-manager.db")]},
        {"id": "agent", "agent": "thief", "prompt": "go"},
        {"id": "link", "action": "shell", "argv": ["ln", "-s", token_path, "leak"]},
        {"id": "write", "action": "write_file", "path": "leak", "content": "pwned", "depends_on": ["link"]},
        {"id": "readback", "action": "shell", "argv": ["cat", "leak"], "depends_on": ["write"]},
    ]})
    runs += [(await user.get(f"/api/runs/{s['run_id']}")).json() for s in view["steps"] if s.get("run_id")]
    # the planner (its raw answer comes back in the error)
    loot.add("planner", await user.post("/api/plans", json={"goal": "anything", "planner": "thief"}))
    # the files API, on the links the runs planted in the agents' workspaces
    for agent in ("thief", "cat"):
        for link in ("symlink-admin-token", "link-admin-token", "symlink-config.toml", "link-agent-manager.db"):
            r = loot.add("files", await user.get("/api/files", params={"agent": agent, "path": link}))
            assert r.status_code in (403, 404), (agent, link, r.status_code, r.text)
        loot.add("files listing", await user.get("/api/files", params={"agent": agent}))
    for run in runs:
        loot.add("run events", await user.get(f"/api/runs/{run['id']}/events"))
    loot.add("runs list", await user.get("/api/runs", params={"limit": 500}))
    return loot, runs


def _read_secrets(run: dict[str, Any], home: Path, pid: int) -> list[str]:
    """Lines of the thief's output saying it read one of the service's files (bwrap's own tiny
    /proc/1/environ inside a sandbox is not the service's)."""
    return [line for line in (run["output"] or "").splitlines()
            if " READ " in line and (line.startswith(str(home)) or line.startswith(f"/proc/{pid}/"))]


def _secrets(home: Path, *extra: str) -> list[str]:
    token = (home / "admin-token").read_text().strip()
    return [token, *extra]


# -- routing decisions -------------------------------------------------------------------------

@pytest.fixture
def executors() -> dict[str, Any]:
    class Up:
        def __init__(self, name: str) -> None:
            self.name = name

        async def available(self) -> Any:
            from agent_manager.executors.base import Availability
            return Availability(True)

    return {n: Up(n) for n in ("local", "sandbox", "daytona")}


@pytest.mark.parametrize("backend", [None, "local"])
async def test_non_admin_local_runs_switch_user_or_go_to_the_sandbox(tmp_path: Path, executors: dict[str, Any],
                                                                    backend: str | None) -> None:
    cfg = Settings(home=tmp_path)
    admin = await route(RouteRequest(run_backend=backend), cfg, executors)
    assert admin.backend == "local" and admin.run_as is None
    switched = await route(RouteRequest(run_backend=backend, user_admin=False, run_as="nobody"), cfg, executors)
    assert switched.backend == "local" and switched.run_as == "nobody" and "'nobody'" in switched.reason
    cannot = await route(RouteRequest(run_backend=backend, user_admin=False,
                                      run_as_problem="the service does not run as root"), cfg, executors)
    assert cannot.backend == "sandbox" and cannot.run_as is None
    assert "non-admin" in cannot.reason and "does not run as root" in cannot.reason
    heavy = await route(RouteRequest(user_admin=False, resources=Resources(memory_mb=10**6),
                                     run_as_problem="no"), cfg, executors)
    assert heavy.backend == "sandbox"


async def test_the_run_manager_decides_who_a_run_runs_as(settings: Settings, service: Service,
                                                         tmp_path: Path) -> None:
    runs = service.runs
    workspace = settings.workspaces / "agents" / "x"
    runs.is_root = lambda: False
    assert runs.run_as_user(workspace) == (None, "the service does not run as root, so it cannot switch to "
                                                 "another OS user")
    if os.geteuid() != 0:
        return
    runs.is_root = lambda: True
    user, problem = runs.run_as_user(workspace)  # the default user is not there
    assert user is None and "does not exist" in problem and "useradd --system" in problem
    if lookup_user(RUN_AS) is None:
        pytest.skip(f"no {RUN_AS!r} user here")
    settings.run_as_user = RUN_AS
    user, problem = runs.run_as_user(workspace)  # under the 0700 data directory: out of reach
    assert user is None and "out of reach" in problem and "workspaces_dir" in problem
    open_dir = Path(tempfile.mkdtemp(prefix="am-ws-", dir="/tmp"))
    try:
        os.chmod(open_dir, 0o711)
        user, problem = runs.run_as_user(open_dir / "agents" / "x")
        assert user is not None and user.name == RUN_AS and problem == ""
        settings.run_as_user = "nobody"  # the sandbox's host user: refused
        assert runs.run_as_user(open_dir)[0] is None and "sandbox" in runs.run_as_user(open_dir)[1]
        settings.run_as_user = "root"
        assert runs.run_as_user(open_dir)[0] is None
    finally:
        shutil.rmtree(open_dir)


# -- in process: the service as root (CI), and the non-root decision injected -----------------

@pytest.fixture
async def env(settings: Settings, fake_path: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient, Any]]:
    async with running_service(settings) as svc, in_process_client(settings, svc) as admin:
        r = await admin.post("/api/users", json={"name": "trusty", "trusted": True})
        transport = httpx.ASGITransport(app=admin._transport.app)  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                     headers={"Authorization": f"Bearer {r.json()['token']}"}) as user:
            yield svc, admin, user


@pytest.mark.parametrize("root", [True, False], ids=["service-root", "service-not-root"])
async def test_trusted_user_cannot_read_the_admins_secrets(env: Any, root: bool) -> None:
    svc, admin, user = env
    if not (await svc.executors["sandbox"].available()).ok:
        pytest.skip("bubblewrap is not usable here")
    if not root:
        svc.runs.is_root = lambda: False
    (svc.settings.home / "config.toml").write_text(f'daytona_snapshot = "canary-{uuid.uuid4().hex}"\n')
    canary = (svc.settings.home / "config.toml").read_text().split('"')[1]
    token_before = (svc.settings.home / "admin-token").read_text()
    loot, runs = await attack(admin, user, svc.settings.home, os.getpid())
    assert loot.leaks(_secrets(svc.settings.home, canary)) == []
    assert (svc.settings.home / "admin-token").read_text() == token_before
    thieves = [r for r in runs if r["agent_name"] == "thief"]
    assert thieves and all("uid " in (r["output"] or "") for r in thieves), thieves  # they did run
    for run in runs:
        assert not _read_secrets(run, svc.settings.home, os.getpid()), run["output"]
        if not root or os.geteuid() != 0:
            assert run["backend"] == "sandbox", run["route_reason"]
            assert "non-admin" in run["route_reason"] or "untrusted" in run["route_reason"]
    # the admin's own run of the same agent is not routed away (nothing changed for the admin)
    r = await admin.post("/api/runs", json={"agent": "cat", "prompt": "/etc/hostname"})
    assert (await wait_run(admin, r.json()["id"]))["backend"] == "local"


async def test_shell_steps_follow_routing_and_have_no_network_by_default(env: Any) -> None:
    svc, admin, user = env
    if not (await svc.executors["sandbox"].available()).ok:
        pytest.skip("bubblewrap is not usable here")
    svc.runs.is_root = lambda: False
    loot = Loot()
    view = await _orchestration(user, loot, {"steps": [
        {"id": "where", "action": "shell", "argv": ["cat", "/proc/self/cgroup"]},
        {"id": "net", "action": "shell",
         "argv": ["/usr/bin/python3", "-c", "import socket;print(socket.if_nameindex())"]},
    ]})
    steps = {s["id"]: s for s in view["steps"]}
    assert {s["backend"] for s in steps.values()} == {"sandbox"}, steps
    net = (await user.get(f"/api/runs/{steps['net']['run_id']}")).json()
    assert "'lo'" in net["output"] and "tap0" not in net["output"]
    # the admin's shell steps still run on the host
    admin_view = await _orchestration(admin, loot, {"steps": [{"id": "a", "action": "shell", "argv": ["true"]}]})
    assert admin_view["steps"][0]["backend"] == "local"
    # network on a non-shell step is refused by name
    r = await user.post("/api/orchestrations", json={"plan": {"steps": [
        {"id": "w", "action": "write_file", "path": "x", "content": "", "network": True}]}})
    assert r.status_code == 422 and "network" in r.text


async def test_write_file_never_follows_a_planted_symlink(env: Any, tmp_path: Path) -> None:
    svc, admin, _user = env
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    loot = Loot()
    view = await _orchestration(admin, loot, {"steps": [
        {"id": "link", "action": "shell", "argv": ["ln", "-s", str(outside), "leak"]},
        {"id": "dir", "action": "shell", "argv": ["ln", "-s", str(tmp_path), "d"]},
        {"id": "w1", "action": "write_file", "path": "leak", "content": "pwned", "depends_on": ["link"]},
        {"id": "w2", "action": "write_file", "path": "d/new.txt", "content": "pwned", "depends_on": ["dir"]},
    ]})
    steps = {s["id"]: s for s in view["steps"]}
    assert steps["w1"]["status"] == "failed" and steps["w2"]["status"] == "failed"
    assert outside.read_text() == "keep" and not (tmp_path / "new.txt").exists()


async def test_workspaces_are_namespaced(env: Any) -> None:
    svc, admin, _user = env
    for name in ("orchestrations", "agents", "x"):
        assert (await admin.post("/api/agents", json={"name": name, "command": "touch",
                                                      "args": [f"{name}-was-here"]})).status_code == 201
        r = await admin.post("/api/runs", json={"agent": name, "prompt": "ignored"})
        await wait_run(admin, r.json()["id"])
    view = await _orchestration(admin, Loot(), {"steps": [{"id": "a", "action": "shell", "argv": ["touch", "orch"]}]})
    orch_files = set(os.listdir(svc.settings.workspaces / "orchestrations" / view["id"]))
    assert orch_files == {"orch"}, orch_files
    seen: dict[str, set[str]] = {}
    for name in ("orchestrations", "agents", "x"):
        listing = (await admin.get("/api/files", params={"agent": name})).json()
        seen[name] = {e["name"] for e in listing["entries"]}
    assert seen == {"orchestrations": {"orchestrations-was-here", "ignored"},
                    "agents": {"agents-was-here", "ignored"}, "x": {"x-was-here", "ignored"}}, seen
    # a deleted and re-created agent of the same name starts empty
    assert (await admin.delete("/api/agents/x")).status_code == 204
    assert (await admin.post("/api/agents", json={"name": "x", "command": "true"})).status_code == 201
    assert (await admin.get("/api/files", params={"agent": "x"})).json()["entries"] == []


# -- real servers: as root with a reachable workspace (local runs as nobody), and as nobody ----

@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="am-9b-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _real_attack(url: str, home: Path, pid: int, local_allowed: bool = True) -> tuple[Loot, list[dict[str, Any]]]:
    token = (home / "admin-token").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as admin:
        r = await admin.post("/api/users", json={"name": "trusty", "trusted": True})
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {r.json()['token']}"},
                                     timeout=90) as user:
            return await attack(admin, user, home, pid, local_allowed)


@pytest.mark.skipif(os.geteuid() != 0 or lookup_user(RUN_AS) is None, reason="needs root and a run-as user")
async def test_real_server_as_root_runs_users_as_run_as_user(open_tmp: Path, fake_path: Path) -> None:
    canary = f"canary-env-{uuid.uuid4().hex}"
    home = open_tmp / "home"
    server = start_server(home, env={"AM_CANARY": canary, "AGENT_MANAGER_WORKSPACES_DIR": str(open_tmp / "ws"),
                                     "AGENT_MANAGER_RUN_AS_USER": RUN_AS})
    try:
        loot, runs = await _real_attack(server.url, home, server.proc.pid)
    finally:
        stop_server(server)
    assert loot.leaks(_secrets(home, canary)) == []
    run_as = lookup_user(RUN_AS)
    assert run_as is not None
    local = [r for r in runs if r["backend"] == "local"]
    assert local, [r["route_reason"] for r in runs]
    for run in local:
        assert f"'{RUN_AS}'" in run["route_reason"], run["route_reason"]
    thieves = [r for r in local if r["agent_name"] == "thief"]
    assert thieves and all(r["status"] == "succeeded" for r in thieves), thieves  # they did run, locally
    for run in thieves:
        assert f"uid {run_as.uid}" in run["output"] and not _read_secrets(run, home, server.proc.pid), run["output"]
    cats = [r for r in local if r["agent_name"] == "cat"]
    assert cats and all(r["status"] == "failed" and "Permission denied" in (r["error"] or "") for r in cats), cats


def _as_nobody_env(home: Path) -> dict[str, str]:
    return {"AGENT_MANAGER_HOME": str(home), "PATH": os.environ["PATH"], "HOME": str(home),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
async def test_real_server_as_nobody_sends_users_to_the_sandbox(open_tmp: Path, fake_path: Path) -> None:
    nobody = lookup_user("nobody")
    assert nobody is not None
    home = open_tmp / "home"
    home.mkdir()
    os.chown(home, nobody.uid, nobody.gid)
    canary = f"canary-env-{uuid.uuid4().hex}"
    argv = ["setpriv", f"--reuid={nobody.uid}", f"--regid={nobody.gid}", "--clear-groups", sys.executable, "-m",
            "agent_manager", "serve", "--port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=os.getcwd(),
                            env={**_as_nobody_env(home), "AM_CANARY": canary})
    try:
        assert proc.stdout is not None
        seen = ""
        deadline = time.monotonic() + 30
        while "listening on " not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "listening on " in seen, seen
        url = seen.split("listening on ")[1].split()[0]
        for _ in range(100):
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
            await probe.get("/api/health")
        token_path = home / "admin-token"
        for _ in range(50):
            if token_path.exists():
                break
            await asyncio.sleep(0.05)
        loot, runs = await _real_attack(url, home, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert loot.leaks(_secrets(home, canary)) == []
    thieves = [r for r in runs if r["agent_name"] == "thief"]
    assert thieves and all("uid " in (r["output"] or "") for r in thieves), thieves  # they did run
    for run in runs:
        assert not _read_secrets(run, home, proc.pid), run["output"]
        assert run["backend"] in ("sandbox", None) or run["status"] == "failed", run
        if run["backend"] == "sandbox":
            assert "does not run as root" in run["route_reason"], run["route_reason"]


async def test_resume_runs_with_the_plan_owners_rights_not_the_resumers(env: Any) -> None:
    svc, admin, user = env
    if not (await svc.executors["sandbox"].available()).ok:
        pytest.skip("bubblewrap is not usable here")
    svc.runs.is_root = lambda: False
    view = await _orchestration(user, Loot(), {"steps": [{"id": "s", "action": "shell", "argv": ["false"]}]})
    assert view["status"] == "failed" and view["steps"][0]["backend"] == "sandbox"
    r = await admin.post(f"/api/orchestrations/{view['id']}/resume")
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while (view := (await admin.get(f"/api/orchestrations/{view['id']}")).json())["status"] == "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    run = (await admin.get(f"/api/runs/{view['steps'][0]['run_id']}")).json()
    assert run["backend"] == "sandbox" and "non-admin" in run["route_reason"], run


async def test_files_api_refuses_hard_links_to_the_service_files(env: Any) -> None:
    svc, admin, user = env
    assert (await admin.post("/api/agents", json={"name": "h", "command": "true"})).status_code == 201
    agent = (await admin.get("/api/agents/h")).json()
    workspace = svc.settings.workspaces / "agents" / agent["id"]
    workspace.mkdir(parents=True)
    os.link(svc.settings.home / "admin-token", workspace / "innocent.txt")
    (workspace / "fine.txt").write_text("ok")
    os.link(workspace / "fine.txt", workspace / "fine-too.txt")  # ordinary hard links still read
    for who in (user, admin):
        r = await who.get("/api/files", params={"agent": "h", "path": "innocent.txt"})
        assert r.status_code == 403 and svc.settings.home.name not in r.text, r.text
        assert (svc.settings.home / "admin-token").read_text().strip() not in r.text
        assert (await who.get("/api/files", params={"agent": "h", "path": "fine-too.txt"})).json()["content"] == "ok"
