"""Runs through every backend via the API; settings, metrics and the sandboxes endpoints."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from conftest import in_process_client, running_service
from fakes.daytona_emulator import DaytonaEmulator
from helpers import events, parse_metrics, wait_run

from agent_manager.executors.daytona_settings import DaytonaSettings
from agent_manager.settings import Settings


async def test_untrusted_agent_runs_in_the_sandbox(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "gem", "kind": "gemini", "trusted": False})
    run = await wait_run(client, (await client.post("/api/runs", json={"agent": "gem", "prompt": "hi"})).json()["id"])
    assert run["status"] == "succeeded", run
    assert run["backend"] == "sandbox" and "untrusted" in run["route_reason"]
    started = next(e for e in await events(client, run["id"]) if e["type"] == "run.started")
    assert started["data"]["backend"] == "sandbox" and started["data"]["route_reason"] == run["route_reason"]
    assert "Echo: hi" in run["output"]


async def test_yolo_agent_is_treated_as_untrusted(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "gem", "kind": "gemini", "args": ["--yolo"]})
    run = await wait_run(client, (await client.post("/api/runs", json={"agent": "gem", "prompt": "hi"})).json()["id"])
    assert run["backend"] == "sandbox" and "auto-approve" in run["route_reason"]


async def test_daytona_requested_but_not_configured(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "e", "command": "echo"})
    r = await client.post("/api/runs", json={"agent": "e", "prompt": "x", "backend": "daytona"})
    run = await wait_run(client, r.json()["id"])
    assert run["status"] == "failed" and "DAYTONA_API_KEY" in run["error"]


@pytest.fixture
async def cloud_client(daytona_settings: Settings, fake_path: object) -> httpx.AsyncClient:
    async with running_service(daytona_settings) as svc, in_process_client(daytona_settings, svc) as c:
        yield c


async def test_run_on_daytona_and_sweep(cloud_client: httpx.AsyncClient, daytona_emulator: DaytonaEmulator) -> None:
    client = cloud_client
    await client.post("/api/agents", json={"name": "sh", "command": "sh", "args": ["-c", 'echo "[$1]"', "sh"],
                                           "backend": "daytona"})
    posted = await client.post("/api/runs", json={"agent": "sh", "prompt": "a b; c"})
    run = await wait_run(client, posted.json()["id"])
    assert run["status"] == "succeeded", run
    assert run["backend"] == "daytona" and run["sandbox_id"] and run["output"] == "[a b; c]\n"
    assert not daytona_emulator.sandboxes  # deleted after the run
    listing = (await client.get("/api/sandboxes")).json()
    assert listing == []
    r = await client.post("/api/sandboxes/gc")
    assert r.status_code == 200 and r.json() == {"deleted": 0}
    metrics = parse_metrics((await client.get("/metrics")).text)
    assert metrics[("agent_manager_runs_total", (("backend", "daytona"), ("status", "succeeded")))] == 1
    assert metrics[("agent_manager_sandbox_create_seconds_count", (("backend", "daytona"),))] == 1
    assert metrics[("agent_manager_sandboxes_live", (("backend", "daytona"),))] == 0


async def test_settings_api_masks_secrets_and_validates(client: httpx.AsyncClient, settings: Settings) -> None:
    daytona = settings.section("daytona")
    assert isinstance(daytona, DaytonaSettings)
    r = await client.patch("/api/settings", json={"daytona": {"api_key": "dtn-secret-123"},
                                                  "execution_mode": "sandbox", "heavy_cpu": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sections"]["daytona"]["api_key"] == "********"
    assert body["execution_mode"] == "sandbox" and body["heavy_cpu"] == 4
    info = {s["name"]: s for s in body["section_info"]}["daytona"]
    api_key = next(f for f in info["fields"] if f["name"] == "api_key")
    assert (api_key["type"], api_key["default"], api_key["env"]) == ("secret", None, "DAYTONA_API_KEY")
    assert "dtn-secret-123" not in (await client.get("/api/settings")).text
    assert daytona.api_key is not None and daytona.api_key.get_secret_value() == "dtn-secret-123"
    assert "dtn-secret-123" in (settings.home / "config.toml").read_text()  # persisted for the next start
    # Sending the mask back keeps the secret (nested, dotted or by the older flat name).
    for masked in ({"daytona": {"api_key": "********"}}, {"daytona.api_key": "********"},
                   {"daytona_api_key": "********"}, {"sections": {"daytona": {"api_key": "********"}}}):
        assert (await client.patch("/api/settings", json=masked)).status_code == 200
        assert daytona.api_key.get_secret_value() == "dtn-secret-123"
    for bad, field in (({"execution_mode": "cloud"}, "execution_mode"), ({"nope": 1}, "nope"),
                       ({"port": 1}, "port"), ({"max_concurrent_runs": 0}, "max_concurrent_runs"),
                       ({"daytona": {"warm_pool": -1}}, "daytona.warm_pool"),
                       ({"sandbox_memory_mb": 1}, "sandbox.memory_mb"), ({"daytona": {"nope": 1}}, "daytona.nope"),
                       ({"daytona": "x"}, "daytona"), ({"sections": {"nosuch": {"a": 1}}}, "nosuch")):
        r = await client.patch("/api/settings", json=bad)
        assert r.status_code == 422 and field in r.json()["error"]["message"], (bad, r.text)
        details = r.json()["error"]["details"]
        assert field in [d["field"] for d in details], (bad, details)
    assert settings.execution_mode == "sandbox"  # failed patches changed nothing
    assert daytona.warm_pool == 0 and settings.section("sandbox").memory_mb == 2048  # type: ignore[union-attr]


async def test_metrics_format(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "e", "command": "echo"})
    await wait_run(client, (await client.post("/api/runs", json={"agent": "e", "prompt": "x"})).json()["id"])
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    metrics = parse_metrics(response.text)
    assert metrics[("agent_manager_runs_total", (("backend", "local"), ("status", "succeeded")))] == 1
    assert metrics[("agent_manager_run_duration_seconds_count", ())] == 1
    assert metrics[("agent_manager_run_duration_seconds_bucket", (("le", "+Inf"),))] == 1
    assert metrics[("agent_manager_queue_depth", ())] == 0
    assert metrics[("agent_manager_sandboxes_live", (("backend", "sandbox"),))] == 0


async def test_unreachable_cloud_is_a_503_naming_it_not_a_500(tmp_path: Path, fake_path: object) -> None:
    """A configured remote backend that cannot be reached: listing and sweeping say so (503)."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = Settings(home=tmp_path / "home", daytona={"api_key": "k-unreachable-secret",
                                                         "api_url": f"http://127.0.0.1:{closed}/api"})
    async with running_service(settings) as svc, in_process_client(settings, svc) as client:
        for r in (await client.get("/api/sandboxes"), await client.post("/api/sandboxes/gc")):
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert "could not" in error["message"] and "k-unreachable-secret" not in r.text
