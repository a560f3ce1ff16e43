"""Browser sessions against a real server: a captured cookie is dead after logout, token
rotation (a user's through the API, the admin's file plus a restart) ends every session of
that holder, sessions expire, and the database never holds a usable cookie."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from conftest import LiveServer, start_server, stop_server

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
