"""Issue 9 (API side): request limits, strict parsing of what clients send, per-user caps and
visibility, the wrong-token back-off, and the data directory's permissions."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import LiveServer, start_server, stop_server
from fastapi import FastAPI
from helpers import wait_run, wait_status

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web.app import create_app


@pytest.fixture
async def app(settings: Settings, service: Service) -> FastAPI:
    return create_app(settings, service=service)


@pytest.fixture
async def make(app: FastAPI) -> AsyncIterator[Any]:
    made: list[httpx.AsyncClient] = []

    def _make(token: str | None = None, **headers: str) -> httpx.AsyncClient:
        all_headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **headers}
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                              headers=all_headers)
        made.append(c)
        return c

    yield _make
    for c in made:
        await c.aclose()


async def _user(admin: httpx.AsyncClient, name: str, trusted: bool = True) -> str:
    r = await admin.post("/api/users", json={"name": name, "trusted": trusted})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


# -- strict parsing of parameters and headers ---------------------------------------------------

async def test_nul_in_search_is_a_4xx_naming_the_query_parameter(app: FastAPI, make: Any) -> None:
    admin = make(app.state.token)
    for path in ("/api/runs", "/api/conversations"):
        r = await admin.get(path, params={"q": "a\x00b"})
        assert r.status_code == 422, (path, r.status_code, r.text)
        details = r.json()["error"]["details"]
        assert details[0]["field"] == "q" and details[0]["in"] == "query"


async def test_bad_resume_points_are_4xx_not_a_broken_stream(app: FastAPI, make: Any) -> None:
    admin = make(app.state.token)
    assert (await admin.post("/api/agents", json={"name": "e", "command": "echo"})).status_code == 201
    run = (await admin.post("/api/runs", json={"agent": "e", "prompt": "hi"})).json()
    await wait_run(admin, run["id"])
    sse = {"Accept": "text/event-stream"}
    for value in (b"\xb2", b"\xd9\xa3", b"1e3", b"-1", b"99999999999999999999"):  # "²", Arabic-Indic 3, ...
        r = await admin.get(f"/api/runs/{run['id']}/events", headers={**sse, "Last-Event-ID": value})  # type: ignore[dict-item]
        assert r.status_code == 400, (value, r.status_code, r.text)
        assert "Last-Event-ID" in r.json()["error"]["message"]
    for accept in ("text/event-stream", "application/json"):
        r = await admin.get(f"/api/runs/{run['id']}/events", params={"after": "99999999999999999999"},
                            headers={"Accept": accept})
        assert r.status_code == 422, (accept, r.status_code, r.text)
        assert r.json()["error"]["details"][0] == {**r.json()["error"]["details"][0], "field": "after", "in": "query"}
    r = await admin.get("/api/orchestrations/x/events", params={"after": str(2**63)})
    assert r.status_code == 422
    ok = await admin.get(f"/api/runs/{run['id']}/events", headers={**sse, "Last-Event-ID": "2"})
    assert ok.status_code == 200 and "id: 3" in ok.text


async def test_validation_errors_say_where_the_parameter_is(app: FastAPI, make: Any) -> None:
    admin = make(app.state.token)
    assert (await admin.post("/api/agents", json={"name": "e", "command": "echo"})).status_code == 201
    r = await admin.get("/api/files", params={"agent": "e", "path": "x" * 5000})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["details"][0]["field"] == "path" and error["details"][0]["in"] == "query"
    assert "query parameter path" in error["message"] and "body" not in error["message"]
    r = await admin.get("/api/runs", params={"limit": "0"})
    assert r.json()["error"]["details"][0]["in"] == "query"
    r = await admin.post("/api/runs", json={"agent": "e", "prompt": ""})
    assert r.json()["error"]["details"][0] == {**r.json()["error"]["details"][0], "field": "prompt", "in": "body"}


@pytest.mark.parametrize("host", ["evil.com@127.0.0.1:8765", "localhost:8765, evil.com", "localhost:8765 evil.com",
                                  "127.0.0.1:8765/evil", "evil.com#@127.0.0.1", "user:pw@localhost", "localhost:",
                                  "localhost:99999999", "[::1", "", "evil.com"])
async def test_host_header_is_parsed_strictly(app: FastAPI, make: Any, host: str) -> None:
    r = await make(app.state.token).get("/api/runs", headers={"Host": host})
    assert r.status_code == 403, (host, r.status_code)


@pytest.mark.parametrize("host", ["localhost:8765", "127.0.0.1", "[::1]:8765", "LOCALHOST:1", "127.0.0.2:80"])
async def test_loopback_hosts_still_work(app: FastAPI, make: Any, host: str) -> None:
    assert (await make(app.state.token).get("/api/runs", headers={"Host": host})).status_code == 200


# -- wrong-token back-off ------------------------------------------------------------------------

async def test_wrong_tokens_back_off_but_the_right_token_always_works(app: FastAPI, make: Any) -> None:
    token = app.state.token
    wrong = make("W" * len(token))
    codes = [(await wrong.get("/api/runs")).status_code for _ in range(50)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes
    last = await wrong.get("/api/runs")
    assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
    assert last.json()["error"]["code"] == "too_many_requests"
    # the same client address, the right token: answered at once
    assert (await make(token).get("/api/runs")).status_code == 200
    # a user's right token as well
    user_token = await _user(make(token), "u")
    assert (await make(user_token).get("/api/runs")).status_code == 200


async def test_wrong_logins_back_off_but_the_right_token_logs_in(app: FastAPI, make: Any) -> None:
    anon = make(Origin="http://127.0.0.1")
    codes = [(await anon.post("/login", data={"token": "x" * 43})).status_code for _ in range(15)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes
    r = await anon.post("/login", data={"token": app.state.token})
    assert r.status_code == 303 and "am_session" in r.headers["set-cookie"]


# -- per-user caps and visibility ----------------------------------------------------------------

async def test_users_cannot_ask_for_more_resources_than_the_settings_allow(app: FastAPI, make: Any) -> None:
    admin = make(app.state.token)
    assert (await admin.post("/api/agents", json={"name": "e", "command": "echo"})).status_code == 201
    user = make(await _user(admin, "u"))
    r = await user.post("/api/runs", json={"agent": "e", "prompt": "x", "resources": {"memory_mb": 1_048_576}})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "resources.memory_mb" in error["message"] and "2048" in error["message"]
    assert error["details"][0]["field"] == "resources.memory_mb" and error["details"][0]["limit"] == 2048
    r = await user.post("/api/runs", json={"agent": "e", "prompt": "x", "resources": {"cpu": 64}})
    assert r.status_code == 422 and "resources.cpu" in r.json()["error"]["message"]
    within = await user.post("/api/runs", json={"agent": "e", "prompt": "x", "resources": {"memory_mb": 512}})
    assert within.status_code == 201
    await wait_run(user, within.json()["id"])
    # the admin sets the caps and is not bound by them
    r = await admin.post("/api/runs", json={"agent": "e", "prompt": "x", "resources": {"memory_mb": 8192}})
    assert r.status_code == 201
    await wait_run(admin, r.json()["id"])


async def test_sandbox_list_shows_only_the_callers_runs(app: FastAPI, make: Any, service: Service) -> None:
    if not (await service.executors["sandbox"].available()).ok:
        pytest.skip("bubblewrap is not usable here")
    admin = make(app.state.token)
    assert (await admin.post("/api/agents", json={"name": "s", "command": "sleep", "args": ["{prompt}"],
                                                  "backend": "sandbox"})).status_code == 201
    alice, bob = make(await _user(admin, "alice")), make(await _user(admin, "bob"))
    ra = (await alice.post("/api/runs", json={"agent": "s", "prompt": "7311"})).json()
    rb = (await bob.post("/api/runs", json={"agent": "s", "prompt": "7312"})).json()
    try:
        await wait_status(alice, ra["id"], "running")
        await wait_status(bob, rb["id"], "running")
        seen_by_alice = (await alice.get("/api/sandboxes")).json()
        assert [s["run"] for s in seen_by_alice] == [ra["id"]]
        assert rb["id"] not in str(seen_by_alice)
        bob_pid = next(s["id"] for s in (await admin.get("/api/sandboxes")).json() if s["run"] == rb["id"])
        assert bob_pid and bob_pid not in [s["id"] for s in seen_by_alice]
        assert {s["run"] for s in (await admin.get("/api/sandboxes")).json()} >= {ra["id"], rb["id"]}
    finally:
        await admin.post(f"/api/runs/{ra['id']}/cancel")
        await admin.post(f"/api/runs/{rb['id']}/cancel")


# -- the data directory --------------------------------------------------------------------------

def _modes(home: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in home.iterdir() if p.is_file()}


async def test_data_directory_is_0700_and_its_files_0600(settings: Settings, fake_path: Path) -> None:
    from conftest import in_process_client, running_service

    home = settings.home
    home.mkdir(parents=True)
    os.chmod(home, 0o755)
    (home / "config.toml").write_text("history_messages = 5\n")
    os.chmod(home / "config.toml", 0o644)
    old = os.umask(0o022)
    try:
        async with running_service(settings) as svc, in_process_client(settings, svc) as admin:
            assert (await admin.post("/api/agents", json={"name": "e", "command": "echo"})).status_code == 201
            run = (await admin.post("/api/runs", json={"agent": "e", "prompt": "hi"})).json()
            await wait_run(admin, run["id"])
            assert (await admin.patch("/api/settings", json={"history_messages": 7})).status_code == 200
            modes = _modes(home)
            assert {"agent-manager.db", "agent-manager.db-wal", "agent-manager.db-shm", "admin-token",
                    "config.toml"} <= set(modes), modes
            assert stat.S_IMODE(home.stat().st_mode) == 0o700
            assert all(mode == 0o600 for mode in modes.values()), modes
            # files SQLite creates later (a checkpoint that truncates the WAL, then new writes)
            svc.database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (home / "agent-manager.db-wal").unlink()
            run = (await admin.post("/api/runs", json={"agent": "e", "prompt": "again"})).json()
            await wait_run(admin, run["id"])
            assert all(mode == 0o600 for mode in _modes(home).values()), _modes(home)
    finally:
        os.umask(old)


# -- request bodies: a real server on a real port ------------------------------------------------

def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _send_body(server: LiveServer, chunked: bool, total: int) -> tuple[int, bytes]:
    """POST ``total`` bytes to /api/runs; returns (bytes the server took before answering, answer)."""
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    head = (f"POST /api/runs HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {server.token}\r\n"
            "Content-Type: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n") + "\r\n")
    sock.sendall(head.encode())
    piece = b'{"agent": "' + b"a" * (1 << 20)
    sent = 0
    answer = b""
    sock.setblocking(False)
    try:
        while sent < total:
            try:
                answer += sock.recv(65536)
                if answer:
                    break
            except BlockingIOError:
                pass
            data = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
            try:
                sock.settimeout(5)
                sock.sendall(data)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(piece)
        sock.settimeout(10)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return sent, answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_bodies_are_refused_early(tmp_path: Path, fake_path: Path, chunked: bool) -> None:
    server = start_server(tmp_path / "home", env={"AGENT_MANAGER_MAX_REQUEST_BYTES": str(8 << 20)})
    try:
        before = _rss_kb(server.proc.pid)
        started = time.monotonic()
        sent, answer = _send_body(server, chunked, 200 << 20)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 64 << 20, f"the server kept reading: {sent >> 20} MiB sent before the answer"
        if not chunked:
            assert sent <= 8 << 20  # refused on the header alone (what was sent sits in socket buffers)
        grown_mb = (_rss_kb(server.proc.pid) - before) / 1024
        assert grown_mb < 50, f"RSS grew by {grown_mb:.0f} MB"
        assert time.monotonic() - started < 30
        # still healthy, and a normal request works
        r = httpx.get(f"{server.url}/api/runs", headers=server.headers, timeout=5)
        assert r.status_code == 200
    finally:
        stop_server(server)


async def test_limits_follow_settings_changes_at_once(app: FastAPI, make: Any) -> None:
    admin = make(app.state.token)
    r = await admin.patch("/api/settings", json={"max_request_bytes": 2048, "auth_failures_allowed": 2})
    assert r.status_code == 200, r.text
    r = await admin.post("/api/runs", content=b"{" + b" " * 4096 + b"}", headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]["message"]
    wrong = make("W" * 43)
    assert [(await wrong.get("/api/runs")).status_code for _ in range(3)] == [401, 401, 429]


async def test_resuming_a_finished_run_past_its_end_does_not_hold_the_connection(app: FastAPI, make: Any) -> None:
    """A client resuming (Last-Event-ID / ?after=) at or past a finished run's last event used to
    get an SSE stream of keep-alives forever, and the raw output waited a status check: nothing
    will ever come, so the SSE answer is 204 (which also stops a browser's EventSource from
    reconnecting) and the raw output ends at once."""
    import asyncio

    admin = make(app.state.token)
    assert (await admin.post("/api/agents", json={"name": "e", "command": "echo"})).status_code == 201
    run = (await admin.post("/api/runs", json={"agent": "e", "prompt": "hi"})).json()
    await wait_run(admin, run["id"])
    last = (await admin.get(f"/api/runs/{run['id']}/events")).json()[-1]["seq"]
    sse = {"Accept": "text/event-stream"}
    async with asyncio.timeout(10):  # liveness: without the fix these never end
        for headers, params in (({**sse, "Last-Event-ID": str(last)}, {}), (sse, {"after": str(last + 1000)})):
            r = await admin.get(f"/api/runs/{run['id']}/events", headers=headers, params=params)
            assert r.status_code == 204, (headers, params, r.status_code)
        r = await admin.get(f"/api/runs/{run['id']}/output", params={"after": str(last + 1000)})
        assert r.status_code == 200 and r.content == b""
    # resuming before the end still replays the rest and ends with the finish
    r = await admin.get(f"/api/runs/{run['id']}/events", headers={**sse, "Last-Event-ID": str(last - 1)})
    assert r.status_code == 200 and b"event: run.finished" in r.content


async def test_a_stream_resumed_past_a_live_runs_end_ends_when_the_run_does(app: FastAPI, make: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import sys

    from agent_manager.web import sse

    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.2)  # the silent stream asks whether the run ended at each keep-alive
    admin = make(app.state.token)
    code = "import time; print('x', flush=True); time.sleep(1)"
    assert (await admin.post("/api/agents", json={"name": "s", "command": sys.executable,
                                                  "args": ["-c", code, "{prompt}"]})).status_code == 201
    run = (await admin.post("/api/runs", json={"agent": "s", "prompt": "p"})).json()
    async with asyncio.timeout(20):  # liveness: without the check this stream never ends
        r = await admin.get(f"/api/runs/{run['id']}/events", params={"after": "1000000"},
                            headers={"Accept": "text/event-stream"})
    assert r.status_code == 200 and b"event:" not in r.content
    assert (await admin.get(f"/api/runs/{run['id']}")).json()["status"] == "succeeded"
