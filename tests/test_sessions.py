"""Browser sessions against a real server: a captured cookie is dead after logout, token
rotation (a user's through the API, the admin's with `agent-manager token --rotate` or a new
token file) ends every session of that holder, sessions expire, and the database never holds
a usable cookie."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import LiveServer, start_server, stop_server
from playwright.sync_api import expect
from ui_harness import UI

from agent_manager.web import auth
from agent_manager.web.auth import save_token


def _login(server: LiveServer, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
    r = httpx.get(f"{server.url}/login", params={"token": token}, headers=headers, follow_redirects=False)
    assert r.status_code == 303, r.text
    return r


def _cookie(response: httpx.Response) -> str:
    return response.cookies[auth.COOKIE]


def _as(server: LiveServer, cookie: str, path: str = "/api/users/me") -> int:
    return httpx.get(f"{server.url}{path}", headers={"Cookie": f"{auth.COOKIE}={cookie}"}).status_code


def _db(server: LiveServer) -> sqlite3.Connection:
    return sqlite3.connect(server.home / "agent-manager.db")


def test_logout_ends_the_session_on_the_server(live_server: LiveServer) -> None:
    first = _login(live_server, live_server.token)
    flags = first.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=strict" in flags and "max-age=2592000" in flags
    assert "secure" not in flags  # plain http: a Secure cookie would never come back
    captured, other = _cookie(first), _cookie(_login(live_server, live_server.token))
    assert captured != other and live_server.token not in (captured, other)
    assert _as(live_server, captured) == _as(live_server, other) == 200

    out = httpx.post(f"{live_server.url}/logout", headers={"Cookie": f"{auth.COOKIE}={captured}",
                                                             "Origin": live_server.url})
    assert out.status_code == 303 and f'{auth.COOKIE}=""' in out.headers["set-cookie"]
    assert _as(live_server, captured) == 401  # the copy an attacker kept is dead too
    assert _as(live_server, captured, "/api/agents") == 401
    assert _as(live_server, other) == 200  # another browser's session is its own

    # What the database holds is no cookie: neither the value nor anything that works as one.
    with _db(live_server) as conn:
        stored = [r[0] for r in conn.execute("SELECT id_hash FROM sessions")]
    assert len(stored) == 1 and other not in stored
    assert other.encode() not in (live_server.home / "agent-manager.db").read_bytes()
    assert _as(live_server, stored[0]) == 401


def test_rotating_a_token_ends_every_session_of_that_user(live_server: LiveServer) -> None:
    admin = httpx.Client(base_url=live_server.url, headers=live_server.headers)
    ops = admin.post("/api/users", json={"name": "ops", "admin": True}).json()
    laptop, phone = _cookie(_login(live_server, ops["token"])), _cookie(_login(live_server, ops["token"]))
    admin_cookie = _cookie(_login(live_server, live_server.token))
    assert _as(live_server, laptop) == _as(live_server, phone) == _as(live_server, admin_cookie) == 200

    rotated = admin.post(f"/api/users/{ops['id']}/token")
    assert rotated.status_code == 200
    assert _as(live_server, laptop) == _as(live_server, phone) == 401
    assert _as(live_server, admin_cookie) == 200  # someone else's rotation ends nobody else's session
    fresh = _cookie(_login(live_server, rotated.json()["token"]))
    assert _as(live_server, fresh) == 200
    assert admin.delete(f"/api/users/{ops['id']}").status_code == 204
    assert _as(live_server, fresh) == 401
    with _db(live_server) as conn:
        assert conn.execute("SELECT COUNT(*) FROM sessions WHERE user_id = ?", (ops["id"],)).fetchone()[0] == 0
    admin.close()


def test_admin_token_rotation_ends_admin_sessions(tmp_path: Path, fake_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        cookie = _cookie(_login(server, server.token))
    finally:
        stop_server(server)
    server = start_server(home)  # a restart alone keeps the session (it lives on the server)
    try:
        assert _as(server, cookie) == 200
    finally:
        stop_server(server)
    save_token(home / "admin-token", "rotated-admin-token-" + "x" * 24)  # the admin rotates the token
    server = start_server(home)
    try:
        assert server.token.startswith("rotated-admin-token-")
        assert _as(server, cookie) == 401
        assert _as(server, _cookie(_login(server, server.token))) == 200
    finally:
        stop_server(server)


def test_sessions_expire_and_the_cookie_says_so(tmp_path: Path, fake_path: Path) -> None:
    server = start_server(tmp_path / "home", env={"AGENT_MANAGER_SESSION_MAX_AGE_S": "3600"})
    try:
        login = _login(server, server.token)
        assert "max-age=3600" in login.headers["set-cookie"].lower()
        cookie = _cookie(login)
        assert _as(server, cookie) == 200
        with _db(server) as conn:
            left = conn.execute("SELECT (julianday(expires_at) - julianday(created_at)) * 86400 FROM sessions")
            assert round(left.fetchone()[0]) == 3600
            conn.execute("UPDATE sessions SET expires_at = '2000-01-01T00:00:00.000Z'")  # an hour has passed
        assert _as(server, cookie) == 401
        # Behind an https proxy on this host the cookie is Secure.
        proxied = _login(server, server.token, {"X-Forwarded-Proto": "https"})
        assert "secure" in proxied.headers["set-cookie"].lower()
    finally:
        stop_server(server)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(home)}
    env.pop("AGENT_MANAGER_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "agent_manager", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_rotating_the_admin_token_of_a_running_service(live_server: LiveServer) -> None:
    old = live_server.token
    admin = httpx.Client(base_url=live_server.url, headers=live_server.headers)
    boss = admin.post("/api/users", json={"name": "boss", "admin": True}).json()
    boss_cookie = _cookie(_login(live_server, boss["token"]))
    admin_cookie = _cookie(_login(live_server, old))
    # An admin user is not the holder of the admin token: 403, and nothing changed.
    refused = httpx.post(f"{live_server.url}/api/token/rotate", headers={"Authorization": f"Bearer {boss['token']}"})
    assert refused.status_code == 403 and (live_server.home / "admin-token").read_text().strip() == old

    done = _cli(live_server.home, "token", "--rotate")
    assert done.returncode == 0, done.stderr
    new = done.stdout.strip()
    assert new != old and (live_server.home / "admin-token").read_text().strip() == new
    assert stat.S_IMODE((live_server.home / "admin-token").stat().st_mode) == 0o600
    assert _as(live_server, admin_cookie) == 401  # the admin's browser sessions ended
    assert admin.get("/api/agents").status_code == 401  # so did the old token
    assert httpx.get(f"{live_server.url}/api/agents", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert _as(live_server, boss_cookie) == 200  # users' sessions are theirs
    assert _cli(live_server.home, "token").stdout.strip() == new  # client commands read the new file
    assert _cli(live_server.home, "agents", "list").returncode == 0
    # The rotation is in the audit log, the token is not.
    audit = httpx.get(f"{live_server.url}/api/audit", headers={"Authorization": f"Bearer {new}"}).text
    assert "admin.token_rotate" in audit and new not in audit and old not in audit
    admin.close()


def test_rotating_the_admin_token_while_the_service_is_stopped(tmp_path: Path, fake_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        cookie = _cookie(_login(server, server.token))
    finally:
        stop_server(server)
    done = _cli(home, "token", "--rotate")
    assert done.returncode == 0, done.stderr
    server = start_server(home)
    try:
        assert server.token == done.stdout.strip()
        assert _as(server, cookie) == 401
    finally:
        stop_server(server)


def test_the_log_out_button_ends_the_session_for_every_copy(ui: UI, live_server: LiveServer) -> None:
    """In Chromium: log in through the page, keep a copy of the cookie, press Log out."""
    page = ui.page
    ui.go("/")
    copy = next(c["value"] for c in page.context.cookies() if c["name"] == auth.COOKIE)
    assert _as(live_server, copy) == 200
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Token")).to_be_visible()
    assert _as(live_server, copy) == 401
