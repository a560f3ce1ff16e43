"""/api/agents over the in-process ASGI client."""

from __future__ import annotations

import httpx
import pytest


async def test_crud_by_id_and_name(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/agents", json={"name": "gem", "kind": "gemini", "env": {"GEMINI_API_KEY": "s3cret",
                                                                                       "COLOR": "blue"}})
    assert r.status_code == 201, r.text
    agent = r.json()
    assert agent["command"] == "gemini" and agent["available"] is True  # the fake on PATH
    assert agent["env"] == {"GEMINI_API_KEY": "********", "COLOR": "blue"}
    assert (await client.get(f"/api/agents/{agent['id']}")).json()["name"] == "gem"
    assert (await client.get("/api/agents/gem")).json()["id"] == agent["id"]
    r = await client.patch("/api/agents/gem", json={"model": "gemini-2.5-pro", "env": {"GEMINI_API_KEY": "********",
                                                                                       "COLOR": "red"}})
    assert r.status_code == 200 and r.json()["model"] == "gemini-2.5-pro"
    stored = client._transport.app.state.service.database  # type: ignore[attr-defined]
    from agent_manager.store import agents as agent_store
    assert agent_store.get(stored, "gem")["env"] == {"GEMINI_API_KEY": "s3cret", "COLOR": "red"}  # mask kept secret
    assert [a["name"] for a in (await client.get("/api/agents")).json()] == ["gem"]
    assert (await client.delete("/api/agents/gem")).status_code == 204
    r = await client.get("/api/agents/gem")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_missing_executable_is_reported_with_hint(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/agents", json={"name": "ghost", "kind": "generic", "command": "no-such-cli-xyz"})
    assert r.json()["available"] is False
    r = await client.post("/api/agents", json={"name": "cdx", "kind": "codex", "command": "codex-not-installed"})
    assert r.json()["available"] is False and "npm" in r.json()["install_hint"]


@pytest.mark.parametrize("body,field", [
    ({"name": "bad name!", "kind": "generic", "command": "x"}, "name"),
    ({"name": "ok", "kind": "robot", "command": "x"}, "kind"),
    ({"name": "ok", "kind": "generic"}, "command"),
    ({"name": "ok", "kind": "generic", "command": "x", "timeout_s": -1}, "timeout_s"),
    ({"name": "ok", "kind": "generic", "command": "x", "env": {"BAD NAME": "v"}}, "env"),
    ({"name": "ok", "kind": "generic", "command": "x", "working_dir": "relative/dir"}, "working_dir"),
    ({"name": "ok", "kind": "generic", "command": "x", "backend": "cloud"}, "backend"),
    ({"name": "ok", "kind": "generic", "command": "x", "surprise": 1}, "surprise"),
])
async def test_invalid_fields_name_the_field(client: httpx.AsyncClient, body: dict, field: str) -> None:
    r = await client.post("/api/agents", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_failed" and field in error["message"]


async def test_duplicate_name_conflict_keeps_first(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/agents", json={"name": "a", "command": "echo"})).status_code == 201
    r = await client.post("/api/agents", json={"name": "a", "command": "cat"})
    assert r.status_code == 409
    assert (await client.get("/api/agents/a")).json()["command"] == "echo"


async def test_patch_rejects_null_required(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "a", "command": "echo"})
    r = await client.patch("/api/agents/a", json={"command": None})
    assert r.status_code == 422 and "command" in r.json()["error"]["message"]


async def test_unknown_route_and_bad_json_are_json_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.post("/api/agents", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"


async def test_health_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/health")).json()["status"] == "ok"
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/api/runs/{run_id}/events" in paths and "/api/agents" in paths
