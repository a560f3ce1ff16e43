"""Saved plans over HTTP: validated when saved, replaced by name, each user's own, deletable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web.app import create_app

PLAN = {"name": "nightly", "steps": [{"id": "note", "action": "write_file", "path": "n.txt", "content": "hi"}]}


@pytest.fixture
async def app(settings: Settings, service: Service) -> FastAPI:
    return create_app(settings, service=service)


@pytest.fixture
async def admin(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                 headers={"Authorization": f"Bearer {app.state.token}"}) as c:
        yield c


async def test_save_list_replace_run_and_delete(admin: httpx.AsyncClient, app: FastAPI) -> None:
    created = await admin.post("/api/plans/saved", json={"name": "nightly-report", "plan": PLAN})
    assert created.status_code == 201, created.text
    saved = created.json()
    assert saved["name"] == "nightly-report" and saved["steps"] == 1 and saved["plan"]["steps"][0]["id"] == "note"
    # the same name again replaces it (200), as YAML this time
    yaml_text = "name: nightly\nsteps:\n  - id: a\n    action: write_file\n    path: a\n    content: x\n" \
                "  - id: b\n    action: write_file\n    path: b\n    content: y\n    depends_on: [a]\n"
    again = await admin.post("/api/plans/saved", json={"name": "nightly-report", "yaml": yaml_text})
    assert again.status_code == 200 and again.json()["id"] == saved["id"] and again.json()["steps"] == 2
    listed = (await admin.get("/api/plans/saved")).json()
    assert [p["name"] for p in listed] == ["nightly-report"]
    one = (await admin.get(f"/api/plans/saved/{saved['id']}")).json()
    run = await admin.post("/api/orchestrations", json={"plan": one["plan"]})
    assert run.status_code == 201
    assert (await admin.delete(f"/api/plans/saved/{saved['id']}")).status_code == 204
    assert (await admin.get(f"/api/plans/saved/{saved['id']}")).status_code == 404
    assert (await admin.delete(f"/api/plans/saved/{saved['id']}")).status_code == 404


@pytest.mark.parametrize("body", [
    {"name": "bad name", "plan": PLAN},
    {"name": "x", "plan": {"steps": [{"id": "a", "agent": "nobody", "prompt": "p"}]}},
    {"name": "x", "yaml": "steps: [\n"},
    {"name": "x"},
    {"name": "x", "plan": PLAN, "extra": 1},
])
async def test_invalid_saved_plans_are_refused(admin: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await admin.post("/api/plans/saved", json=body)
    assert response.status_code in (400, 422), response.text
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert (await admin.get("/api/plans/saved")).json() == []


async def test_users_see_only_their_own_saved_plans(admin: httpx.AsyncClient, app: FastAPI) -> None:
    tokens = []
    for name in ("alice", "bob"):
        r = await admin.post("/api/users", json={"name": name, "trusted": True})
        tokens.append(r.json()["token"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                 headers={"Authorization": f"Bearer {tokens[0]}"}) as alice, \
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                              headers={"Authorization": f"Bearer {tokens[1]}"}) as bob:
        mine = (await alice.post("/api/plans/saved", json={"name": "same", "plan": PLAN})).json()
        theirs = await bob.post("/api/plans/saved", json={"name": "same", "plan": PLAN})
        assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]  # one name per owner
        assert [p["id"] for p in (await bob.get("/api/plans/saved")).json()] == [theirs.json()["id"]]
        assert (await bob.get(f"/api/plans/saved/{mine['id']}")).status_code == 404
        assert (await bob.delete(f"/api/plans/saved/{mine['id']}")).status_code == 404
        assert len((await admin.get("/api/plans/saved")).json()) == 2  # the admin sees all
