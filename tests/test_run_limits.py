"""Runs at their limits: cancel that answers at once, prompts too long for argv, the prompt
file on every backend, working_dir validation, stored-output cap and retention."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from conftest import in_process_client, running_service
from fakes.daytona_emulator import DaytonaEmulator
from helpers import events, wait_run, wait_status

from agent_manager.run_request import MAX_ARG_BYTES
from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.store import runs as run_store

SLEEPER = "import sys, time; print('started', flush=True); time.sleep(float(sys.argv[1]))"


async def add(client: httpx.AsyncClient, name: str, **fields: object) -> dict:
    r = await client.post("/api/agents", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def start(client: httpx.AsyncClient, agent: str, prompt: str, **extra: object) -> dict:
    r = await client.post("/api/runs", json={"agent": agent, "prompt": prompt, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


# -- cancel answers at once -------------------------------------------------------------------

@pytest.fixture
def one_slot(settings: Settings) -> Settings:
    settings.max_concurrent_runs = 1
    return settings


async def test_cancel_of_a_queued_run_does_not_wait_for_a_slot(one_slot: Settings, service: Service,
                                                               client: httpx.AsyncClient) -> None:
    await add(client, "sleep", command=sys.executable, args=["-c", SLEEPER, "{prompt}"])
    busy = await start(client, "sleep", "60")
    await wait_status(client, busy["id"], "running")
    queued = await start(client, "sleep", "60")
    assert (await client.get(f"/api/runs/{queued['id']}")).json()["status"] == "queued"
    # The busy run holds the only slot for a minute: a cancel that waited for it would time out.
    r = await asyncio.wait_for(client.post(f"/api/runs/{queued['id']}/cancel"), 10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    finished = [e for e in await events(client, queued["id"]) if e["type"] == "run.finished"]
    assert len(finished) == 1 and finished[0]["data"]["status"] == "cancelled"
    assert (await client.get(f"/api/runs/{busy['id']}")).json()["status"] == "running"
    await client.post(f"/api/runs/{busy['id']}/cancel")


async def test_cancel_of_an_orchestration_with_queued_steps_answers_at_once(
        one_slot: Settings, service: Service, client: httpx.AsyncClient) -> None:
    await add(client, "sleep", command=sys.executable, args=["-c", SLEEPER, "{prompt}"])
    plan = {"name": "p", "max_parallel": 3, "steps": [{"id": f"s{i}", "agent": "sleep", "prompt": "60"}
                                                       for i in range(3)]}
    orch = (await client.post("/api/orchestrations", json={"plan": plan})).json()
    for _ in range(600):
        runs = (await client.get("/api/runs")).json()["items"]
        if len(runs) == 3 and any(r["status"] == "running" for r in runs):
            break
        await asyncio.sleep(0.05)
    assert sorted(r["status"] for r in runs) == ["queued", "queued", "running"]
    r = await asyncio.wait_for(client.post(f"/api/orchestrations/{orch['id']}/cancel"), 15)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    statuses = {run["status"] for run in (await client.get("/api/runs")).json()["items"]}
    assert statuses == {"cancelled"}


async def test_cancel_while_the_daytona_sandbox_is_being_created(
        daytona_settings: Settings, daytona_emulator: DaytonaEmulator, fake_path: Path) -> None:
    daytona_settings.assign("daytona.create_timeout_s", 120)
    daytona_emulator.slow_creation(60)
    async with running_service(daytona_settings) as svc, in_process_client(daytona_settings, svc) as client:
        await add(client, "sh", command="sh", args=["-c", "echo hi", "sh"], backend="daytona")
        run = await start(client, "sh", "x")
        for _ in range(600):
            if daytona_emulator.sandboxes:
                break
            await asyncio.sleep(0.05)
        assert daytona_emulator.sandboxes, "the sandbox creation never began"
        r = await asyncio.wait_for(client.post(f"/api/runs/{run['id']}/cancel"), 10)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        for _ in range(600):  # the half-created sandbox is deleted behind the answer
            if not daytona_emulator.sandboxes:
                break
            await asyncio.sleep(0.05)
    assert not daytona_emulator.sandboxes


async def test_raising_max_concurrent_runs_starts_queued_runs(one_slot: Settings, service: Service,
                                                              client: httpx.AsyncClient) -> None:
    await add(client, "sleep", command=sys.executable, args=["-c", SLEEPER, "{prompt}"])
    first = await start(client, "sleep", "60")
    await wait_status(client, first["id"], "running")
    second = await start(client, "sleep", "60")
    await asyncio.sleep(0.3)
    assert (await client.get(f"/api/runs/{second['id']}")).json()["status"] == "queued"
    r = await client.patch("/api/settings", json={"max_concurrent_runs": 2})
    assert r.status_code == 200, r.text
    await wait_status(client, second["id"], "running", timeout=10)
    for run in (first, second):
        await client.post(f"/api/runs/{run['id']}/cancel")


# -- prompts: argv limit and {prompt_file} ----------------------------------------------------

async def test_oversize_prompt_is_refused_at_request_time(client: httpx.AsyncClient, service: Service) -> None:
    await add(client, "echo", kind="generic", command="echo")
    before = run_store.search(service.database)[1]
    r = await client.post("/api/runs", json={"agent": "echo", "prompt": "x" * 999_999})
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert str(MAX_ARG_BYTES) in message and "{prompt_file}" in message
    assert run_store.search(service.database)[1] == before  # no run was recorded
    # Just under the limit is fine (multi-byte characters count as bytes).
    ok = await client.post("/api/runs", json={"agent": "echo", "prompt": "é" * (MAX_ARG_BYTES // 2)})
    assert ok.status_code == 201
    assert (await wait_run(client, ok.json()["id"]))["status"] == "succeeded"


async def _prompt_file_run(client: httpx.AsyncClient, backend: str | None, prompt: str) -> dict:
    fields: dict[str, object] = {"kind": "generic", "command": "sh",
                                 "args": ["-c", 'printf "%s|" "$1"; cat -- "$1"', "sh", "{prompt_file}"]}
    if backend:
        fields["backend"] = backend
    await add(client, f"pf-{backend or 'default'}", **fields)
    run = await wait_run(client, (await start(client, f"pf-{backend or 'default'}", prompt))["id"], timeout=60)
    assert run["status"] == "succeeded", run
    return run


async def test_prompt_file_on_the_local_backend(client: httpx.AsyncClient, settings: Settings) -> None:
    prompt = "line one\n--flag $(touch /tmp/x) 'quoted'\n" + "y" * (MAX_ARG_BYTES + 10)
    run = await _prompt_file_run(client, "local", prompt)
    path, content = run["output"].split("|", 1)
    assert content == prompt
    assert Path(path).is_absolute() and Path(path).is_relative_to(settings.workspaces.resolve())
    assert not Path(path).exists()  # removed after the run


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
async def test_prompt_file_in_the_sandbox(client: httpx.AsyncClient) -> None:
    prompt = "sandboxed\n" + "z" * (MAX_ARG_BYTES + 1)
    run = await _prompt_file_run(client, "sandbox", prompt)
    path, content = run["output"].split("|", 1)
    assert path.startswith("/workspace/") and content == prompt


async def test_prompt_file_on_daytona(daytona_settings: Settings, daytona_emulator: DaytonaEmulator,
                                      fake_path: Path) -> None:
    async with running_service(daytona_settings) as svc, in_process_client(daytona_settings, svc) as client:
        prompt = "remote\n" + "w" * (MAX_ARG_BYTES + 1)
        run = await _prompt_file_run(client, "daytona", prompt)
    path, content = run["output"].split("|", 1)
    assert content == prompt and ".agent-manager-prompt-" in path


def test_prompt_token_in_a_prompt_is_not_a_file() -> None:
    from agent_manager.agents import get_kind

    invocation = get_kind("generic").build("cat", ["{prompt}"], "{prompt_file}")
    assert invocation.argv[1:] == ["{prompt_file}"] and not invocation.prompt_file_at
    invocation = get_kind("generic").build("cat", ["-n", "{prompt_file}"], "hi")
    assert invocation.prompt_file_at == (2,) and invocation.prompt_file == "hi" and "hi" not in invocation.argv


# -- working_dir --------------------------------------------------------------------------------

async def test_missing_working_dir_is_refused_not_created(client: httpx.AsyncClient, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    r = await client.post("/api/agents", json={"name": "m", "command": "echo", "working_dir": str(missing)})
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
    afile = tmp_path / "a-file"
    afile.write_text("x")
    r = await client.post("/api/agents", json={"name": "f", "command": "echo", "working_dir": str(afile)})
    assert r.status_code == 422 and "not a directory" in r.json()["error"]["message"]
    # An agent whose directory went away after it was registered: the run is refused, not created.
    gone = tmp_path / "gone"
    gone.mkdir()
    await add(client, "g", command="echo", working_dir=str(gone))
    gone.rmdir()
    r = await client.post("/api/runs", json={"agent": "g", "prompt": "hi"})
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
    assert not gone.exists() and not missing.exists()
    r = await client.patch("/api/agents/g", json={"working_dir": str(afile)})
    assert r.status_code == 422


# -- growth: stored output cap, retention -------------------------------------------------------

async def test_stored_output_is_capped_with_the_rest_summarised(settings: Settings, service: Service,
                                                               client: httpx.AsyncClient) -> None:
    settings.max_stored_output_mb = 1
    script = "import sys\nfor _ in range(3 * 1024):\n    sys.stdout.write('x' * 1023 + '\\n')\n"
    await add(client, "big", command=sys.executable, args=["-c", script, "{prompt}"])
    run = await wait_run(client, (await start(client, "big", "go"))["id"], timeout=60)
    assert run["status"] == "succeeded", run
    evs = []
    after = 0
    while batch := (await client.get(f"/api/runs/{run['id']}/events", params={"after": after})).json():
        evs += batch
        after = batch[-1]["seq"]
    stored = sum(len(e["data"]["text"]) for e in evs if e["type"] == "output" and e["data"]["stream"] == "stdout")
    assert stored <= 1024 * 1024
    notice = [e for e in evs if e["type"] == "output" and "output truncated" in e["data"]["text"]]
    assert len(notice) == 1
    dropped = int(notice[0]["data"]["text"].split("truncated: ")[1].split()[0])
    assert stored + dropped == 3 * 1024 * 1024
    assert any(e["type"] == "output.truncated" for e in evs)


async def test_prune_deletes_old_runs_and_their_events(client: httpx.AsyncClient, service: Service) -> None:
    await add(client, "echo", kind="generic", command="echo")
    old = await wait_run(client, (await start(client, "echo", "old"))["id"])
    new = await wait_run(client, (await start(client, "echo", "new"))["id"])
    service.database.execute("UPDATE runs SET finished_at = '2020-01-01T00:00:00.000Z' WHERE id = ?", (old["id"],))
    r = await client.post("/api/runs/prune", json={"older_than_days": 30})
    assert r.status_code == 200 and r.json()["deleted"] == 1
    assert (await client.get(f"/api/runs/{old['id']}")).status_code == 404
    assert not service.database.all("SELECT 1 FROM run_events WHERE run_id = ?", (old["id"],))
    assert (await client.get(f"/api/runs/{new['id']}")).status_code == 200
    assert (await client.get("/api/runs", params={"q": "old"})).json()["total"] == 0
    for bad in ({"older_than_days": -1}, {"older_than_days": "nan"}, {}):
        assert (await client.post("/api/runs/prune", json=bad)).status_code == 422


async def test_retention_setting_prunes_at_once(client: httpx.AsyncClient, service: Service) -> None:
    await add(client, "echo", kind="generic", command="echo")
    old = await wait_run(client, (await start(client, "echo", "old"))["id"])
    service.database.execute("UPDATE runs SET finished_at = '2020-01-01T00:00:00.000Z' WHERE id = ?", (old["id"],))
    assert (await client.patch("/api/settings", json={"run_retention_days": 7})).status_code == 200
    for _ in range(100):
        if (await client.get(f"/api/runs/{old['id']}")).status_code == 404:
            break
        await asyncio.sleep(0.05)
    assert (await client.get(f"/api/runs/{old['id']}")).status_code == 404


def test_runs_prune_cli(live_server: object) -> None:
    import subprocess

    server = live_server
    env = {**os.environ, "AGENT_MANAGER_HOME": str(server.home)}  # type: ignore[attr-defined]
    env.pop("AGENT_MANAGER_URL", None)
    result = subprocess.run([sys.executable, "-m", "agent_manager", "runs", "prune", "--older-than", "30"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "deleted 0 run(s)" in result.stdout
    result = subprocess.run([sys.executable, "-m", "agent_manager", "runs", "prune"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2 and "--older-than" in result.stderr
