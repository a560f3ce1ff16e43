"""HTTP API of plans and orchestrations, the planner with fake planner CLIs, the CLI commands,
and resume after the real server was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import LiveServer, start_server, stop_server

from agent_manager.service import Service

WORKER = ("import sys, time, re; p = sys.argv[1]; m = re.search(r'SLEEP=([0-9.]+)', p); "
          "time.sleep(float(m.group(1))) if m else None; sys.exit('asked to fail') if 'FAIL' in p else "
          "print('done[' + p + ']')")
WORKER_AGENT = {"name": "worker", "kind": "generic", "command": "python3", "args": ["-c", WORKER, "{prompt}"]}
PLAN = {"name": "api", "steps": [
    {"id": "a", "agent": "worker", "prompt": "a"},
    {"id": "b", "agent": "worker", "prompt": "b {{ steps.a.output }}", "depends_on": ["a"]},
    {"id": "c", "action": "write_file", "path": "c.txt", "content": "{{ steps.b.output }}", "depends_on": ["b"]}]}


async def add_agents(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/agents", json=WORKER_AGENT)).status_code == 201
    planner = {"name": "planner", "kind": "generic", "command": "fake-planner"}
    assert (await client.post("/api/agents", json=planner)).status_code == 201


async def wait_done(client: httpx.AsyncClient, orch_id: str) -> dict[str, Any]:
    for _ in range(1000):
        view = (await client.get(f"/api/orchestrations/{orch_id}")).json()
        if view["status"] != "running":
            return view
        await _sleep()
    raise AssertionError("orchestration never finished")


async def _sleep() -> None:
    import asyncio
    await asyncio.sleep(0.02)


async def test_schema_and_validate(client: httpx.AsyncClient) -> None:
    await add_agents(client)
    schema = (await client.get("/api/plans/schema")).json()
    assert schema["title"] == "Agent Manager plan" and "steps" in schema["properties"]
    good = (await client.post("/api/plans/validate", json={"plan": PLAN})).json()
    assert good["valid"] and good["layers"] == [["a"], ["b"], ["c"]] and good["errors"] == []
    assert yaml.safe_load(good["yaml"])["steps"][0] == {"id": "a", "agent": "worker", "prompt": "a"}
    bad = (await client.post("/api/plans/validate", json={"yaml": "steps:\n  - id: x\n    agent: ghost\n"
                                                                  "    prompt: hi\n"})).json()
    assert not bad["valid"] and bad["errors"][0]["step"] == "x" and "unknown agent 'ghost'" in \
        bad["errors"][0]["message"]
    syntax = (await client.post("/api/plans/validate", json={"yaml": "steps: [\n"})).json()
    assert not syntax["valid"] and "line" in syntax["errors"][0]["message"]
    both = await client.post("/api/plans/validate", json={"yaml": "x", "plan": {}})
    assert both.status_code == 422


@pytest.mark.parametrize("body, needle", [
    ({"plan": {"steps": [{"id": "a", "agent": "worker", "prompt": "x", "depends_on": ["a"]}]}}, "cycle: a → a"),
    ({"plan": {"steps": [{"id": "a", "action": "rm", "argv": ["x"]}]}}, "unknown action 'rm'"),
    ({"plan": {"steps": [{"id": "a", "action": "write_file", "path": "../x", "content": ""}]}}, "escapes"),
    ({"plan": {"steps": []}}, "steps"),
    ({"plan": {"steps": "nope"}}, "steps"),
    ({"yaml": "- just\n- a list\n"}, "mapping"),
    ({"yaml": "{{{{"}, "YAML"),
    ({"plan": [1]}, "plan"),
    ({}, "exactly one"),
])
async def test_invalid_orchestrations_are_4xx_naming_the_problem(client: httpx.AsyncClient, body: dict[str, Any],
                                                                 needle: str) -> None:
    await add_agents(client)
    response = await client.post("/api/orchestrations", json=body)
    assert response.status_code in (400, 422), response.text
    assert needle in response.json()["error"]["message"]
    assert (await client.get("/api/orchestrations")).json()["total"] == 0


async def test_run_list_events_and_resume_conflicts(client: httpx.AsyncClient) -> None:
    await add_agents(client)
    created = await client.post("/api/orchestrations", json={"yaml": yaml.safe_dump(PLAN)})
    assert created.status_code == 201, created.text
    orch = created.json()
    assert orch["status"] == "running" and orch["counts"]["total"] == 3
    final = await wait_done(client, orch["id"])
    assert final["status"] == "succeeded"
    assert [s["status"] for s in final["steps"]] == ["succeeded"] * 3
    assert final["steps"][1]["output"] == "done[b done[a]]"
    assert all(s["backend"] == "local" and s["route_reason"].startswith("auto:") for s in final["steps"][:2])
    assert final["steps"][2]["backend"] == "service" and final["steps"][2]["route_reason"] is None
    assert final["started_at"].endswith("Z") and final["finished_at"] >= final["started_at"]
    listed = (await client.get("/api/orchestrations")).json()
    assert listed["total"] == 1 and listed["items"][0]["counts"]["succeeded"] == 3
    assert (await client.get("/api/orchestrations", params={"status": "failed"})).json()["total"] == 0

    events = (await client.get(f"/api/orchestrations/{orch['id']}/events")).json()
    assert events[0]["type"] == "orchestration.started" and events[-1]["type"] == "orchestration.finished"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    started = [e["data"] for e in events if e["type"] == "step.started"]
    assert len(started) == 3 and all(d.get("route_reason") for d in started if d["backend"] == "local")
    async with client.stream("GET", f"/api/orchestrations/{orch['id']}/events",
                             headers={"Accept": "text/event-stream", "Last-Event-ID": "3"}) as response:
        body = (await response.aread()).decode()
    assert body.startswith("id: 4\n") and body.rstrip().endswith("}") and "event: orchestration.finished" in body

    conflict = await client.post(f"/api/orchestrations/{orch['id']}/resume")
    assert conflict.status_code == 409
    assert (await client.get("/api/orchestrations/orch_nope")).status_code == 404
    assert (await client.post("/api/orchestrations/orch_nope/cancel")).status_code == 404


async def test_cancel_and_resume_over_http(client: httpx.AsyncClient, service: Service) -> None:
    await add_agents(client)
    plan = {"steps": [{"id": "slow", "agent": "worker", "prompt": "SLEEP=60"},
                      {"id": "after", "agent": "worker", "prompt": "x", "depends_on": ["slow"]}]}
    orch = (await client.post("/api/orchestrations", json={"plan": plan})).json()
    for _ in range(500):
        if (await client.get(f"/api/orchestrations/{orch['id']}")).json()["steps"][0]["run_id"]:
            break
        await _sleep()
    cancelled = (await client.post(f"/api/orchestrations/{orch['id']}/cancel")).json()
    # the step that never started is cancelled too, not left "pending" forever
    assert cancelled["status"] == "cancelled" and cancelled["counts"]["cancelled"] == 2
    assert [s["status"] for s in cancelled["steps"]] == ["cancelled", "cancelled"]
    # a resumed orchestration's SSE stream does not stop at the first orchestration.finished
    resumed = await client.post(f"/api/orchestrations/{orch['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    await client.post(f"/api/orchestrations/{orch['id']}/cancel")
    events = (await client.get(f"/api/orchestrations/{orch['id']}/events")).json()
    assert [e["type"] for e in events].count("orchestration.finished") == 2


async def test_retry_one_failed_step_and_read_the_files_a_plan_wrote(client: httpx.AsyncClient,
                                                                     service: Service) -> None:
    await add_agents(client)
    flaky = ("import os, sys\nif not os.path.exists('flag'):\n    open('flag', 'w').close()\n"
             "    sys.exit('first try fails')\nprint('second try ok')\n")
    plan = {"steps": [{"id": "flaky", "action": "shell", "argv": ["python3", "-c", flaky]},
                      {"id": "other-bad", "agent": "worker", "prompt": "FAIL"},
                      {"id": "after", "action": "write_file", "path": "out/result.txt",
                       "content": "{{ steps.flaky.output }}", "depends_on": ["flaky"]}]}
    orch = (await client.post("/api/orchestrations", json={"plan": plan})).json()
    view = await service.orchestrations.wait(orch["id"])
    assert {s["id"]: s["status"] for s in view["steps"]} == {"flaky": "failed", "other-bad": "failed",
                                                            "after": "skipped"}
    base = f"/api/orchestrations/{orch['id']}"
    assert (await client.post(f"{base}/steps/nope/retry")).status_code == 404
    response = await client.post(f"{base}/steps/flaky/retry")
    assert response.status_code == 200 and response.json()["status"] == "running"
    view = await service.orchestrations.wait(orch["id"])
    # only that step and what it held back ran again; the other failure keeps its result
    assert {s["id"]: (s["status"], s["attempts"]) for s in view["steps"]} == {
        "flaky": ("succeeded", 2), "other-bad": ("failed", 1), "after": ("succeeded", 1)}
    assert (await client.post(f"{base}/steps/flaky/retry")).status_code == 409  # it succeeded now
    listing = (await client.get(f"{base}/files")).json()
    assert [f["path"] for f in listing["files"]] == ["flag", "out/result.txt"]
    file = (await client.get(f"{base}/files", params={"path": "out/result.txt"})).json()
    assert file["content"] == "second try ok" and file["encoding"] == "utf-8"
    raw = await client.get(f"{base}/files", params={"path": "out/result.txt", "raw": "true"})
    assert raw.content == b"second try ok" and raw.headers["content-type"] == "application/octet-stream"
    for bad in ("../../admin-token", "/etc/passwd", "out/../../x"):
        assert (await client.get(f"{base}/files", params={"path": bad})).status_code in (400, 403)
    workspace = Path(service.settings.workspaces) / "orchestrations" / orch["id"]
    (workspace / "escape").symlink_to(service.settings.home)
    assert (await client.get(f"{base}/files", params={"path": "escape/admin-token"})).status_code in (403, 404)
    assert (await client.get("/api/orchestrations/orch_nope/files")).status_code == 404


async def test_planner_unwraps_fenced_and_json_wrapped_plans(client: httpx.AsyncClient) -> None:
    await add_agents(client)
    for goal in ("write a guide AGENT=worker", "write a guide AGENT=worker JSONWRAP"):
        response = await client.post("/api/plans", json={"goal": goal, "planner": "planner"})
        assert response.status_code == 201, response.text
        draft = response.json()
        assert [s["id"] for s in draft["plan"]["steps"]] == ["research", "outline", "examples", "save"]
        assert "```" in draft["raw"] and len(draft["run_ids"]) == 1
        prompt = (await client.get(f"/api/runs/{draft['run_ids'][0]}")).json()["prompt"]
        assert goal in prompt and "- worker (generic)" in prompt and '"$defs"' in prompt  # goal, agents, schema
    assert (await client.get("/api/orchestrations")).json()["total"] == 0  # planning never runs anything


async def test_planner_gets_one_retry_with_the_errors(client: httpx.AsyncClient) -> None:
    await add_agents(client)
    draft = (await client.post("/api/plans", json={"goal": "docs AGENT=worker BADFIRST", "planner": "planner"}))
    assert draft.status_code == 201, draft.text
    run_ids = draft.json()["run_ids"]
    assert len(run_ids) == 2
    second = (await client.get(f"/api/runs/{run_ids[1]}")).json()["prompt"]
    assert "not a valid plan" in second and "'examples' is not upstream of 'outline'" in second
    failed = await client.post("/api/plans", json={"goal": "docs AGENT=worker ALWAYSBAD", "planner": "planner"})
    assert failed.status_code == 422 and failed.json()["error"]["code"] == "planner_failed"
    assert failed.json()["error"]["details"]["errors"][0]["step"] == "outline"
    prose = await client.post("/api/plans", json={"goal": "NOPLAN", "planner": "planner"})
    assert prose.status_code == 422 and "no plan found" in prose.json()["error"]["message"]


async def test_planner_default_and_missing(client: httpx.AsyncClient) -> None:
    await add_agents(client)
    missing = await client.post("/api/plans", json={"goal": "anything"})
    assert missing.status_code == 400 and "default_planner" in missing.json()["error"]["message"]
    assert (await client.post("/api/plans", json={"goal": "x", "planner": "ghost"})).status_code == 404
    assert (await client.post("/api/plans", json={"goal": "  "})).status_code == 422
    await client.patch("/api/settings", json={"default_planner": "planner"})
    ok = await client.post("/api/plans", json={"goal": "a plan AGENT=worker"})
    assert ok.status_code == 201


# -- the CLI against a real server ---------------------------------------------------------------

def cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_MANAGER_TOKEN": server.token, "AGENT_MANAGER_HOME": str(server.home)}
    return subprocess.run([sys.executable, "-m", "agent_manager", "--url", server.url, *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_plan_then_orchestrate(live_server: LiveServer, tmp_path: Path) -> None:
    httpx.post(f"{live_server.url}/api/agents", json=WORKER_AGENT, headers=live_server.headers).raise_for_status()
    httpx.post(f"{live_server.url}/api/agents", json={"name": "planner", "kind": "generic",
                                                      "command": "fake-planner"},
               headers=live_server.headers).raise_for_status()
    out = tmp_path / "plan.yaml"
    drafted = cli(live_server, "plan", "write a guide AGENT=worker", "--planner", "planner", "-o", str(out))
    assert drafted.returncode == 0, drafted.stderr
    assert yaml.safe_load(out.read_text())["steps"][3]["action"] == "write_file"

    done = cli(live_server, "orchestrate", str(out))
    assert done.returncode == 0, done.stderr
    assert "▶ research started on local" in done.stderr and "[4/4] ✓" in done.stderr
    assert "succeeded: 4 succeeded" in done.stderr

    as_json = cli(live_server, "orchestrate", str(out), "--json")
    assert as_json.returncode == 0, as_json.stderr
    final = json.loads(as_json.stdout)
    assert final["status"] == "succeeded"
    assert all(s["started_at"] and s["finished_at"] and s["duration_s"] is not None for s in final["steps"])

    failing = tmp_path / "failing.yaml"
    failing.write_text(yaml.safe_dump({"steps": [
        {"id": "ok", "agent": "worker", "prompt": "fine"},
        {"id": "bad", "agent": "worker", "prompt": "FAIL"},
        {"id": "never", "agent": "worker", "prompt": "x", "depends_on": ["bad"]}]}))
    failed = cli(live_server, "orchestrate", str(failing))
    assert failed.returncode == 1
    assert "✗ bad failed" in failed.stderr and "- never skipped" in failed.stderr and "✓ ok succeeded" in failed.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("steps:\n  - id: a\n    agent: ghost\n    prompt: x\n")
    rejected = cli(live_server, "orchestrate", str(broken))
    assert rejected.returncode != 0 and "step 'a': agent: unknown agent 'ghost'" in rejected.stderr


def test_resume_after_the_server_was_killed(live_server: LiveServer, tmp_path: Path) -> None:
    """SIGKILL the service mid-run; a new one on the same home marks it interrupted; resume finishes it."""
    url, headers = live_server.url, live_server.headers
    httpx.post(f"{url}/api/agents", json=WORKER_AGENT, headers=headers).raise_for_status()
    once = tmp_path / "once"
    sleeper = ("import os, sys, time; p = sys.argv[1]; os.path.exists(p) or (open(p, 'w').close(), "
               "time.sleep(60)); print('slept')")
    plan = {"steps": [{"id": "a", "agent": "worker", "prompt": "a"},
                      {"id": "b", "action": "shell", "argv": ["python3", "-c", sleeper, str(once)],
                       "depends_on": ["a"]},
                      {"id": "c", "agent": "worker", "prompt": "c {{ steps.a.output }}", "depends_on": ["b"]}]}
    orch = httpx.post(f"{url}/api/orchestrations", json={"plan": plan}, headers=headers).json()
    deadline = time.monotonic() + 30
    while not once.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    live_server.proc.send_signal(signal.SIGKILL)
    live_server.proc.wait(10)

    server = start_server(live_server.home)
    try:
        view = httpx.get(f"{server.url}/api/orchestrations/{orch['id']}", headers=server.headers).json()
        assert view["status"] == "interrupted"
        assert [s["status"] for s in view["steps"]] == ["succeeded", "cancelled", "pending"]
        resumed = httpx.post(f"{server.url}/api/orchestrations/{orch['id']}/resume", headers=server.headers)
        assert resumed.status_code == 200
        with httpx.stream("GET", f"{server.url}/api/orchestrations/{orch['id']}/events",
                          headers={**server.headers, "Accept": "text/event-stream"}, timeout=60) as response:
            text = "".join(response.iter_text())
        assert text.count("event: orchestration.finished") == 2
        final = httpx.get(f"{server.url}/api/orchestrations/{orch['id']}", headers=server.headers).json()
        assert final["status"] == "succeeded"
        assert final["steps"][0]["run_id"] == view["steps"][0]["run_id"]
        assert final["steps"][2]["output"] == "done[c done[a]]"
    finally:
        stop_server(server)
