"""Ending a session or token ends what it already has open (a real server).

Logging out or rotating a token used to stop only *new* requests: a terminal WebSocket opened
with a copied cookie stayed a live shell (the service's own user, for the admin) and an event
stream kept flowing. Now each live connection re-checks its credentials when any may have
ended (web/revocation.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import httpx
from conftest import LiveServer, start_server, stop_server
from terminal_client import TermSocket, attach

from agent_manager.web import auth
from agent_manager.web.revocation import CLOSE_REVOKED


def _cookie_headers(server: LiveServer, token: str) -> dict[str, str]:
    login = httpx.get(f"{server.url}/login", params={"token": token}, follow_redirects=False)
    assert login.status_code == 303, login.text
    return {"Cookie": f"{auth.COOKIE}={login.cookies[auth.COOKIE]}", "Origin": server.url}


async def _open_shell(server: LiveServer, headers: dict[str, str], session: aiohttp.ClientSession) -> TermSocket:
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        created = await client.post("/api/terminals", json={})
    assert created.status_code == 201, created.text
    sock = await attach(session, server.url, created.json()["id"], headers)
    await sock.send("echo READY-$((6*7))\n")
    await sock.expect("READY-42")
    return sock


async def test_logout_rotation_and_demotion_close_open_terminals(live_server: LiveServer) -> None:
    admin = {"Authorization": f"Bearer {live_server.token}"}
    boss = httpx.post(f"{live_server.url}/api/users", json={"name": "boss", "admin": True, "trusted": True},
                      headers=admin).json()
    async with aiohttp.ClientSession() as session:
        # 1. logout: the cookie's own terminal closes, though nothing is typed into it
        headers = _cookie_headers(live_server, live_server.token)
        sock = await _open_shell(live_server, headers, session)
        out = httpx.post(f"{live_server.url}/logout", headers=headers, follow_redirects=False)
        assert out.status_code == 303
        await asyncio.wait_for(sock.closed.wait(), 10)
        assert sock.ws.close_code == CLOSE_REVOKED

        # 2. demoting an admin user closes the shell their session opened
        headers = _cookie_headers(live_server, boss["token"])
        sock = await _open_shell(live_server, headers, session)
        r = httpx.patch(f"{live_server.url}/api/users/{boss['id']}", json={"admin": False}, headers=admin)
        assert r.status_code == 200, r.text
        await asyncio.wait_for(sock.closed.wait(), 10)
        assert sock.ws.close_code == CLOSE_REVOKED

        # 3. rotating the admin token closes a terminal opened with the old bearer token
        bearer = {"Authorization": f"Bearer {live_server.token}"}
        sock = await _open_shell(live_server, bearer, session)
        rotated = httpx.post(f"{live_server.url}/api/token/rotate", headers=bearer)
        assert rotated.status_code == 200, rotated.text
        await asyncio.wait_for(sock.closed.wait(), 10)
        assert sock.ws.close_code == CLOSE_REVOKED
        assert "AFTER" not in sock.text()
        live_server.token = rotated.json()["token"]


def test_rotating_a_users_token_ends_their_open_event_stream(live_server: LiveServer) -> None:
    admin = {"Authorization": f"Bearer {live_server.token}"}
    user = httpx.post(f"{live_server.url}/api/users", json={"name": "watcher", "trusted": True},
                      headers=admin).json()
    ticks = "for i in $(seq 60); do echo tick $i; sleep 0.5; done"
    created = httpx.post(f"{live_server.url}/api/agents", headers=admin,
                         json={"name": "ticker", "command": "sh", "args": ["-c", ticks, "sh"]})
    assert created.status_code == 201, created.text
    mine = {"Authorization": f"Bearer {user['token']}"}
    run = httpx.post(f"{live_server.url}/api/runs", json={"agent": "ticker", "prompt": "p"}, headers=mine).json()
    seen_after = 0
    rotated = False
    try:
        with httpx.stream("GET", f"{live_server.url}/api/runs/{run['id']}/events", timeout=60,
                          headers={**mine, "Accept": "text/event-stream"}) as stream:
            for line in stream.iter_lines():
                if "tick 2" in line and not rotated:
                    r = httpx.post(f"{live_server.url}/api/users/{user['id']}/token", headers=admin)
                    assert r.status_code == 200
                    rotated, at = True, time.monotonic()
                elif rotated and "tick" in line:
                    seen_after += 1
        assert rotated
        # The stream ended right away, not at the run's end 30 s later; at most a tick in flight.
        assert seen_after <= 1 and time.monotonic() - at < 10
        status = httpx.get(f"{live_server.url}/api/runs/{run['id']}", headers=admin).json()["status"]
        assert status == "running"  # the stream ended, not the run
    finally:
        httpx.post(f"{live_server.url}/api/runs/{run['id']}/cancel", headers=admin)


def test_lowering_the_session_lifetime_shortens_sessions_already_open(live_server: LiveServer) -> None:
    """``session_max_age_s`` is how long a session lives after login: an admin who lowers it
    (say after a laptop went missing) expects the long sessions opened before to end too."""
    import sqlite3

    admin = {"Authorization": f"Bearer {live_server.token}"}
    old = _cookie_headers(live_server, live_server.token)
    with sqlite3.connect(live_server.home / "agent-manager.db") as conn:  # logged in two hours ago
        conn.execute("UPDATE sessions SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')")
    assert httpx.get(f"{live_server.url}/api/users/me", headers=old).status_code == 200  # 30 days by default
    r = httpx.patch(f"{live_server.url}/api/settings", json={"session_max_age_s": 3600}, headers=admin)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{live_server.url}/api/users/me", headers=old).status_code == 401
    fresh = _cookie_headers(live_server, live_server.token)
    assert httpx.get(f"{live_server.url}/api/users/me", headers=fresh).status_code == 200


def test_a_new_forwarded_address_per_guess_does_not_escape_the_back_off(
        tmp_path: Path, fake_path: Path) -> None:
    """uvicorn believes ``X-Forwarded-For`` from loopback (where a proxy would be), so a local
    process can claim a new address for every wrong token. All clients' failures together are
    throttled too (at ten times one address's allowance); the right token still always works."""
    server = start_server(tmp_path / "home", env={"AGENT_MANAGER_AUTH_FAILURES_ALLOWED": "2"})
    try:
        codes = [httpx.get(f"{server.url}/api/agents", headers={"Authorization": f"Bearer wrong-guess-{i:04d}",
                                                                 "X-Forwarded-For": f"10.9.{i // 250}.{i % 250 + 1}"}
                           ).status_code for i in range(25)]
        assert codes[:20] == [401] * 20 and codes[20:] == [429] * 5, codes
        assert httpx.get(f"{server.url}/api/agents", headers=server.headers).status_code == 200
    finally:
        stop_server(server)
