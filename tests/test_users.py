"""Users: admin-managed accounts with their own tokens, ownership of runs and conversations,
admin-only changes, and the audit log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import wait_run

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web import auth
from agent_manager.web.app import create_app


@pytest.fixture
async def app(settings: Settings, service: Service) -> FastAPI:
    return create_app(settings, service=service)


class Clients:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.open: list[httpx.AsyncClient] = []

    def make(self, token: str | None = None, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        all_headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://127.0.0.1",
                              headers=all_headers)
        self.open.append(c)
        return c


@pytest.fixture
async def clients(app: FastAPI) -> AsyncIterator[Clients]:
    made = Clients(app)
    yield made
    for c in made.open:
        await c.aclose()


async def _user(admin: httpx.AsyncClient, name: str, trusted: bool = True, is_admin: bool = False) -> dict[str, Any]:
    r = await admin.post("/api/users", json={"name": name, "trusted": trusted, "admin": is_admin})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert body["token"].startswith("amu_")
    return body


async def _agent(admin: httpx.AsyncClient, name: str = "echo", **extra: Any) -> None:
    r = await admin.post("/api/agents", json={"name": name, "command": "echo", **extra})
    assert r.status_code == 201, r.text


async def test_admin_creates_users_token_shown_once_and_stored_hashed(clients: Clients, app: FastAPI,
                                                                      settings: Settings) -> None:
    admin = clients.make(app.state.token)
    alice = await _user(admin, "alice")
    listed = (await admin.get("/api/users")).json()
    assert [u["name"] for u in listed] == ["alice"] and "token" not in listed[0]
    assert "token" not in (await admin.get(f"/api/users/{alice['id']}")).json()
    assert alice["token"].encode() not in settings.db_path.read_bytes()
    wal = settings.db_path.with_name(settings.db_path.name + "-wal")
    assert not wal.exists() or alice["token"].encode() not in wal.read_bytes()
    me = (await clients.make(alice["token"]).get("/api/users/me")).json()
    assert me == {"id": alice["id"], "name": "alice", "admin": False, "trusted": True}
    assert (await admin.post("/api/users", json={"name": "alice"})).status_code == 409
    assert (await admin.post("/api/users", json={"name": "admin"})).status_code == 422
    assert (await admin.post("/api/users", json={"name": "../x"})).status_code == 422


async def test_users_cannot_administer(clients: Clients, app: FastAPI) -> None:
    admin = clients.make(app.state.token)
    await _agent(admin)
    bob = clients.make((await _user(admin, "bob"))["token"])
    forbidden = [("GET", "/api/users", None), ("POST", "/api/users", {"name": "eve"}),
                 ("GET", "/api/audit", None), ("POST", "/api/agents", {"name": "x", "command": "echo"}),
                 ("PATCH", "/api/agents/echo", {"command": "rm"}), ("DELETE", "/api/agents/echo", None),
                 ("PATCH", "/api/settings", {"max_concurrent_runs": 2})]
    for method, path, body in forbidden:
        r = await bob.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
    assert (await bob.get("/api/agents")).status_code == 200  # agents are shared and readable
    assert (await bob.get("/api/agents/echo")).json()["command"] == "echo"
    assert (await bob.get("/api/settings")).status_code == 200


async def test_runs_and_conversations_belong_to_their_user(clients: Clients, app: FastAPI) -> None:
    admin = clients.make(app.state.token)
    await _agent(admin)
    alice = clients.make((await _user(admin, "alice"))["token"])
    bob = clients.make((await _user(admin, "bob"))["token"])
    r = await alice.post("/api/runs", json={"agent": "echo", "prompt": "alicesecretword"})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    await wait_run(alice, run_id)
    conv = (await alice.post("/api/conversations", json={"title": "alice chat", "agent": "echo"})).json()
    posted = await alice.post(f"/api/conversations/{conv['id']}/messages", json={"content": "hello convword"})
    assert posted.status_code == 201
    await wait_run(alice, posted.json()["run"]["id"])

    assert (await alice.get(f"/api/runs/{run_id}")).status_code == 200
    assert b"alicesecretword" in (await alice.get(f"/api/runs/{run_id}/output")).content
    for path in (f"/api/runs/{run_id}", f"/api/runs/{run_id}/events", f"/api/runs/{run_id}/output",
                 f"/api/conversations/{conv['id']}"):
        assert (await bob.get(path)).status_code == 404, path
    sse = await bob.get(f"/api/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
    assert sse.status_code == 404
    assert (await bob.post(f"/api/runs/{run_id}/cancel")).status_code == 404
    r = await bob.post(f"/api/conversations/{conv['id']}/messages", json={"content": "hi"})
    assert r.status_code == 404
    r = await bob.post("/api/runs", json={"agent": "echo", "prompt": "x", "conversation_id": conv["id"]})
    assert r.status_code == 404
    assert (await bob.get("/api/runs")).json()["total"] == 0
    assert (await bob.get("/api/runs", params={"q": "alicesecretword"})).json()["items"] == []
    assert (await bob.get("/api/conversations")).json() == []
    assert (await bob.get("/api/conversations", params={"q": "convword"})).json() == []
    # alice sees hers, the admin sees everything
    assert (await alice.get("/api/runs", params={"q": "alicesecretword"})).json()["total"] == 1
    assert (await admin.get("/api/runs")).json()["total"] == 2
    assert (await admin.get(f"/api/runs/{run_id}/events")).status_code == 200
    assert len((await admin.get("/api/conversations")).json()) == 1


async def test_untrusted_users_run_isolated(clients: Clients, app: FastAPI, service: Service) -> None:
    admin = clients.make(app.state.token)
    await _agent(admin)
    await _agent(admin, "pinned", backend="local")
    mallory = clients.make((await _user(admin, "mallory", trusted=False))["token"])
    assert (await mallory.get("/api/users/me")).json()["trusted"] is False
    r = await mallory.post("/api/runs", json={"agent": "echo", "prompt": "x", "backend": "local"})
    assert r.status_code == 403 and "untrusted" in r.json()["error"]["message"]
    r = await mallory.post("/api/runs", json={"agent": "pinned", "prompt": "x"})
    assert r.status_code == 403
    r = await mallory.post("/api/runs", json={"agent": "echo", "prompt": "x"})
    assert r.status_code == 201
    run = await wait_run(mallory, r.json()["id"])
    assert run["backend"] != "local"
    assert run["backend"] in ("sandbox", "daytona") or "untrusted" in (run["error"] or "")
    if run["route_reason"]:
        assert "untrusted" in run["route_reason"]


async def test_rotate_and_delete_end_access_including_cookies(clients: Clients, app: FastAPI) -> None:
    admin = clients.make(app.state.token)
    carol = await _user(admin, "carol")
    anon = clients.make()
    login = await anon.get(f"/login?token={carol['token']}")
    assert login.status_code == 303
    cookie_header = login.headers["set-cookie"]
    assert "HttpOnly" in cookie_header and carol["token"] not in cookie_header
    cookie = {"Cookie": cookie_header.split(";")[0]}
    assert (await anon.get("/api/users/me", headers=cookie)).json()["name"] == "carol"
    r = await anon.post("/api/conversations", json={"title": "t"}, headers={**cookie, "Origin": "http://127.0.0.1"})
    assert r.status_code == 201
    r = await anon.post("/api/conversations", json={"title": "t"}, headers={**cookie, "Origin": "http://evil.example"})
    assert r.status_code == 403

    rotated = (await admin.post(f"/api/users/{carol['id']}/token")).json()
    assert rotated["token"] != carol["token"]
    assert (await clients.make(carol["token"]).get("/api/users/me")).status_code == 401
    assert (await anon.get("/api/users/me", headers=cookie)).status_code == 401  # old session ended
    fresh = clients.make(rotated["token"])
    assert (await fresh.get("/api/users/me")).status_code == 200
    assert (await admin.patch(f"/api/users/{carol['id']}", json={"trusted": False})).json()["trusted"] is False
    assert (await fresh.get("/api/users/me")).json()["trusted"] is False
    assert (await admin.patch(f"/api/users/{carol['id']}", json={"admin": True})).json()["admin"] is True
    assert (await fresh.get("/api/users")).status_code == 200  # now an admin
    assert (await admin.delete(f"/api/users/{carol['id']}")).status_code == 204
    assert (await fresh.get("/api/users/me")).status_code == 401
    assert (await admin.delete(f"/api/users/{carol['id']}")).status_code == 404


async def test_forged_user_cookie_is_refused(clients: Clients, app: FastAPI) -> None:
    admin = clients.make(app.state.token)
    dave = await _user(admin, "dave")
    anon = clients.make()
    for value in (dave["token"], f"{dave['id']}.{'0' * 64}", f"{dave['id']}.", dave["id"],
                  "0" * 43, auth.COOKIE):
        r = await anon.get("/api/users/me", headers={"Cookie": f"{auth.COOKIE}={value}"})
        assert r.status_code == 401, value


async def test_audit_log_records_who_changed_what(clients: Clients, app: FastAPI) -> None:
    admin = clients.make(app.state.token)
    erin = await _user(admin, "erin")
    await _agent(admin, "a1", env={"API_KEY": "canary-audit-secret"})
    await admin.patch("/api/agents/a1", json={"command": "true", "env": {"API_KEY": "canary-audit-secret2"}})
    await admin.patch("/api/settings", json={"daytona_api_key": "canary-audit-dt", "max_concurrent_runs": 3})
    await admin.patch(f"/api/users/{erin['id']}", json={"trusted": False})
    await admin.post(f"/api/users/{erin['id']}/token")
    await _agent(admin, "sleeper", command="sleep", args=["30"])
    erin_c = clients.make((await admin.post(f"/api/users/{erin['id']}/token")).json()["token"])
    await admin.patch(f"/api/users/{erin['id']}", json={"trusted": True})
    run = (await erin_c.post("/api/runs", json={"agent": "sleeper", "prompt": "5"})).json()
    assert (await erin_c.post(f"/api/runs/{run['id']}/cancel")).status_code == 200
    await admin.delete("/api/agents/a1")
    page = (await admin.get("/api/audit", params={"limit": 100})).json()
    actions = [(e["actor"], e["action"]) for e in reversed(page["items"])]
    for expected in [("admin", "user.create"), ("admin", "agent.create"), ("admin", "agent.update"),
                     ("admin", "settings.update"), ("admin", "user.update"), ("admin", "user.token_rotate"),
                     ("erin", "run.cancel"), ("admin", "agent.delete")]:
        assert expected in actions, expected
    text = json.dumps(page)
    assert "canary-audit" not in text  # secrets never reach the audit log
    settings_entry = next(e for e in page["items"] if e["action"] == "settings.update")
    assert settings_entry["details"]["daytona.api_key"] == "********"
    assert settings_entry["details"]["max_concurrent_runs"] == 3
    update = next(e for e in page["items"] if e["action"] == "agent.update")
    assert update["details"]["fields"] == ["command", "env"]
    only_agents = (await admin.get("/api/audit", params={"action": "agent."})).json()
    assert {e["action"] for e in only_agents["items"]} == {"agent.create", "agent.update", "agent.delete"}
    assert (await admin.get("/api/audit", params={"actor": "erin"})).json()["total"] == 1
    assert all(e["at"].endswith("Z") for e in page["items"])
