"""Remote access safety: loopback by default, auth on every route, Host allow-list, Origin check
(notes C.1-C.4)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import start_server, stop_server
from fastapi import FastAPI
from starlette.routing import Mount, Route, WebSocketRoute

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web import auth
from agent_manager.web.app import create_app

OPEN = {"/api/health", "/login", "/logout", "/favicon.ico"}
EVIL = "http://evil.example"


@pytest.fixture
async def app(settings: Settings, service: Service) -> FastAPI:
    return create_app(settings, service=service)


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        yield c


def _concrete(path: str) -> str:
    """A request path for a route template: every {param} gets a dummy value."""
    out, depth = [], 0
    for ch in path:
        if ch == "{":
            depth += 1
            out.append("x1")
        elif ch == "}":
            depth -= 1
        elif not depth:
            out.append(ch)
    return "".join(out)


def _routes(app: FastAPI) -> list[Any]:
    """Every route, with included routers flattened (newer FastAPI nests them)."""
    from fastapi import routing

    iterate = getattr(routing, "iter_route_contexts", None)
    return list(iterate(app.routes)) if iterate else list(app.routes)


def _targets(app: FastAPI) -> list[tuple[str, str, str]]:
    """(kind, method, path) for every route the app has — routes added later are covered too."""
    found: list[tuple[str, str, str]] = []
    for route in _routes(app):
        original = getattr(route, "original_route", route)
        if isinstance(original, WebSocketRoute) or "websocket" in type(original).__name__.lower():
            found.append(("ws", "GET", _concrete(route.path)))
        elif isinstance(original, Mount):
            found.append(("http", "GET", route.path.rstrip("/") + "/x1"))
        elif isinstance(original, Route) or route.methods is not None:
            for method in sorted(route.methods or {"GET"}):
                found.append(("http", method, _concrete(route.path)))
        else:  # pragma: no cover - a new kind of route must be thought about
            raise AssertionError(f"unknown route type {type(original)}")
    return found


async def _ws_handshake(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Drive a WebSocket handshake through the ASGI app; returns the first message it sends."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), *headers], "scheme": "ws", "subprotocols": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "asgi": {"version": "3.0"}}
    queue = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]


async def test_every_route_requires_credentials(app: FastAPI, anon: httpx.AsyncClient) -> None:
    app.state.throttle.allowed = lambda: 1_000_000  # this walk sends thousands of wrong tokens on purpose
    token = app.state.token
    wrong = ("A" if token[0] != "A" else "B") + token[1:]  # same length, one character off
    assert len(wrong) == len(token)
    credential_sets: list[list[tuple[str, str]]] = [
        [],
        [("Authorization", f"Bearer {wrong}")],
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],  # repeated header
        [("Authorization", f"Basic {token}")],
        [("Authorization", f"bearer{token}")],
        [("Cookie", f"{auth.COOKIE}={token}")],  # the raw token is not a session
        [("Cookie", f"{auth.COOKIE}=usr_x1.{'0' * 64}")],
    ]
    targets = _targets(app)
    assert {p for _, _, p in targets} >= {"/api/agents", "/api/runs", "/metrics", "/openapi.json", "/docs",
                                          "/api/users", "/api/files", "/api/audit"}
    checked = 0
    for kind, method, path in targets:
        if path in OPEN:
            continue
        for creds in credential_sets:
            if kind == "ws":
                msg = await _ws_handshake(app, path, [(k.lower().encode(), v.encode()) for k, v in creds])
                assert msg["type"] == "websocket.close", (path, creds)
                continue
            headers = httpx.Headers(creds)
            for accept in ("application/json", "text/event-stream", "text/html"):
                headers["Accept"] = accept
                r = await anon.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, creds, accept, r.status_code)
                assert "www-authenticate" in r.headers
                checked += 1
    assert checked > 100


async def test_open_paths_are_only_health_and_login(anon: httpx.AsyncClient) -> None:
    assert (await anon.get("/api/health")).status_code == 200
    page = await anon.get("/login")
    assert page.status_code == 200 and "<form" in page.text
    assert (await anon.get("/")).status_code == 401


async def test_valid_token_is_accepted(app: FastAPI, anon: httpx.AsyncClient) -> None:
    r = await anon.get("/api/agents", headers={"Authorization": f"Bearer {app.state.token}"})
    assert r.status_code == 200
    for header in ("x-frame-options", "x-content-type-options", "referrer-policy"):
        assert header in r.headers


def test_token_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.tokens_match("abc", "abc") and not auth.tokens_match("abd", "abc")
    assert len(calls) == 2
    source = Path(auth.__file__).read_text()
    assert "== self.token" not in source and "== expected" not in source


def test_token_file_is_0600_and_rejects_junk(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    token, created = auth.ensure_token(path)
    assert created and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    assert auth.ensure_token(path) == (token, False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened
    path.write_text("short\n")
    with pytest.raises(Exception, match="valid token"):
        auth.ensure_token(path)


async def test_repeated_token_query_is_refused(app: FastAPI, anon: httpx.AsyncClient) -> None:
    token = app.state.token
    r = await anon.get(f"/login?token={token}&token={token}")
    assert r.status_code == 400 and "set-cookie" not in r.headers
    r = await anon.get(f"/login?token={token[:-1]}x")
    assert r.status_code == 401 and "set-cookie" not in r.headers


async def test_login_sets_a_strict_httponly_cookie_that_is_not_the_token(app: FastAPI,
                                                                         anon: httpx.AsyncClient) -> None:
    token = app.state.token
    r = await anon.get(f"/login?token={token}")
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert token not in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    r = await anon.get("/api/agents", headers={"Cookie": f"{auth.COOKIE}={value}"})
    assert r.status_code == 200
    out = await anon.post("/logout", headers={"Origin": "http://127.0.0.1"})
    assert out.status_code == 303 and 'am_session=""' in out.headers["set-cookie"]


# -- Host allow-list (DNS rebinding) --------------------------------------------------------

async def test_foreign_host_header_is_refused_even_with_a_token(app: FastAPI, anon: httpx.AsyncClient,
                                                                 service: Service) -> None:
    bearer = {"Authorization": f"Bearer {app.state.token}"}
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost.evil.example"):
        r = await anon.get("/api/agents", headers={**bearer, "Host": host})
        assert r.status_code == 403, host
        assert "allowed_hosts" in r.json()["error"]["message"]
    r = await anon.get("/api/health", headers={"Host": "evil.example"})
    assert r.status_code == 403  # even the open route
    for host in ("localhost", "localhost:8765", "127.0.0.1:8765", "[::1]:8765", "127.0.0.2"):
        r = await anon.get("/api/agents", headers={**bearer, "Host": host})
        assert r.status_code == 200, host
    service.settings.allowed_hosts = ["agents.internal"]
    assert (await anon.get("/api/agents", headers={**bearer, "Host": "agents.internal:443"})).status_code == 200
    assert (await anon.get("/api/agents", headers={**bearer, "Host": "evil.example"})).status_code == 403


def test_host_check_on_the_real_server(live_server: Any) -> None:
    port = live_server.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=live_server.url, headers=live_server.headers) as c:
        assert c.get("/api/agents", headers={"Host": f"evil.example:{port}"}).status_code == 403
        assert c.get("/api/agents", headers={"Host": f"localhost:{port}"}).status_code == 200
        assert c.get("/api/agents", headers={"Host": f"127.0.0.1:{port}"}).status_code == 200


# -- Origin check (CSRF, cross-site WebSocket) ----------------------------------------------

async def _cookie(app: FastAPI, anon: httpx.AsyncClient) -> str:
    r = await anon.get(f"/login?token={app.state.token}")
    return str(r.headers["set-cookie"].split(";")[0])


async def test_cookie_post_from_another_origin_is_refused(app: FastAPI, anon: httpx.AsyncClient) -> None:
    cookie = {"Cookie": await _cookie(app, anon)}
    body = {"name": "csrf", "command": "echo"}
    r = await anon.post("/api/agents", json=body, headers={**cookie, "Origin": EVIL})
    assert r.status_code == 403 and "Origin" in r.json()["error"]["message"]
    r = await anon.post("/api/agents", json=body, headers={**cookie, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = await anon.post("/api/agents", json=body, headers={**cookie, "Origin": "null"})
    assert r.status_code == 403
    r = await anon.post("/api/agents", json=body, headers=cookie)  # neither Origin nor Fetch metadata
    assert r.status_code == 403
    r = await anon.delete("/api/agents/x1", headers={**cookie, "Origin": EVIL})
    assert r.status_code == 403
    assert (await anon.get("/api/agents", headers=cookie)).json() == []  # nothing was created
    r = await anon.post("/api/agents", json=body, headers={**cookie, "Origin": "http://127.0.0.1"})
    assert r.status_code == 201, r.text
    r = await anon.post("/api/agents", json={**body, "name": "csrf2"},
                        headers={**cookie, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 201, r.text


async def test_login_form_from_another_origin_is_refused(app: FastAPI, anon: httpx.AsyncClient) -> None:
    r = await anon.post("/login", data={"token": app.state.token}, headers={"Origin": EVIL})
    assert r.status_code == 403 and "set-cookie" not in r.headers


async def test_bearer_requests_are_csrf_safe(app: FastAPI, anon: httpx.AsyncClient) -> None:
    """A browser cannot attach Authorization cross-site without a CORS preflight, which we never grant."""
    bearer = {"Authorization": f"Bearer {app.state.token}"}
    r = await anon.post("/api/agents", json={"name": "b", "command": "echo"}, headers={**bearer, "Origin": EVIL})
    assert r.status_code == 201
    for path in ("/api/agents", "/api/runs", "/api/files"):
        pre = await anon.options(path, headers={"Origin": EVIL, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization"})
        assert "access-control-allow-origin" not in pre.headers, path
        assert "access-control-allow-credentials" not in pre.headers
        assert pre.status_code >= 400
    r = await anon.get("/api/agents", headers={**bearer, "Origin": EVIL})
    assert "access-control-allow-origin" not in r.headers


async def test_websocket_upgrade_checks_origin(app: FastAPI) -> None:
    """No WebSocket route exists today; the middleware still refuses cross-site upgrades."""
    token = app.state.token
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as browser:
        cookie = (await browser.get(f"/login?token={token}")).cookies[auth.COOKIE]
    for headers in ([(b"cookie", f"{auth.COOKIE}={cookie}".encode()), (b"origin", EVIL.encode())],
                    [(b"cookie", f"{auth.COOKIE}={cookie}".encode())],
                    [(b"origin", EVIL.encode())]):
        msg = await _ws_handshake(app, "/api/ws", headers)
        assert msg["type"] == "websocket.close" and msg["code"] in (4401, 4403), headers


# -- binding ---------------------------------------------------------------------------------

def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                addr, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":
                    found.append(addr)
    return found


def test_default_listener_is_loopback_and_token_stays_out_of_argv(tmp_path: Path, fake_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        assert server.url.startswith("http://127.0.0.1:")
        assert _listeners(port) == ["0100007F"]  # 127.0.0.1, nothing else
        token_file = home / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
        assert server.token.encode() not in cmdline and server.token.encode() not in environ
        assert httpx.get(f"{server.url}/api/agents").status_code == 401
    finally:
        server.proc.terminate()
        assert server.proc.stdout is not None
        out = server.proc.stdout.read()  # the buffered reader: it may already hold the next lines
        server.proc.wait(10)
    # the first start printed the login URL once; a second start does not print the token
    again = start_server(home)
    try:
        assert again.token == server.token
    finally:
        again.proc.terminate()
        assert again.proc.stdout is not None
        second = again.proc.stdout.read()
        again.proc.wait(10)
    assert server.token not in second, second
    assert "admin-token" in second, second
    assert "First start" in out and out.count(server.token) == 1  # the login URL, printed once


@pytest.mark.parametrize("how", ["flag", "env", "env-host"])
def test_non_loopback_without_auth_refuses_to_start(tmp_path: Path, how: str) -> None:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(tmp_path / "home")}
    args = [sys.executable, "-m", "agent_manager", "serve", "--port", "0"]
    if how == "flag":
        args += ["--host", "0.0.0.0", "--no-auth"]
    elif how == "env":
        args += ["--host", "0.0.0.0"]
        env["AGENT_MANAGER_AUTH"] = "off"
    else:
        env["AGENT_MANAGER_AUTH"] = "off"
        env["AGENT_MANAGER_HOST"] = "0.0.0.0"
    started = time.monotonic()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert "refusing to serve 0.0.0.0 without authentication" in proc.stderr
    assert "--host 127.0.0.1" in proc.stderr and "--no-auth" in proc.stderr
    assert "listening" not in proc.stdout
    assert time.monotonic() - started < 20


def test_no_auth_on_loopback_is_allowed_but_still_checks_host_and_origin(tmp_path: Path, fake_path: Path) -> None:
    server = start_server(tmp_path / "home", "--no-auth")
    try:
        port = server.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=server.url) as c:
            assert c.get("/api/agents").status_code == 200
            assert c.get("/api/agents", headers={"Host": f"evil.example:{port}"}).status_code == 403
            r = c.post("/api/agents", json={"name": "x", "command": "echo"}, headers={"Origin": EVIL})
            assert r.status_code == 403
    finally:
        stop_server(server)
