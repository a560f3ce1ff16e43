"""Interactive terminals end to end: a real server, real PTYs, real bubblewrap, the real Daytona
SDK against the emulator, and a WebSocket client typing into them (docs/terminals.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from pathlib import Path

import aiohttp
import httpx
import pytest
from conftest import LiveServer, start_server, stop_server
from fakes.daytona_emulator import DaytonaEmulator
from terminal_client import attach, open_terminal
from terminal_fixtures import FAST, leftovers, until


@pytest.mark.parametrize("backend", ["local", "sandbox"])
async def test_shell_types_resizes_reattaches_and_exits(server: LiveServer, api: httpx.AsyncClient,
                                                        wss: aiohttp.ClientSession, backend: str) -> None:
    term = await open_terminal(api, backend=backend, cols=100, rows=30)
    assert term["backend"] == backend
    sock = await attach(wss, server.url, term["id"])
    await sock.send("echo sum-$((6*7)); stty size; id -u\n")
    await sock.expect(r"sum-42\s+30 100")
    uid = (await sock.expect(r"30 100\s+(\d+)")).group(1)
    assert (uid == "65534") == (backend == "sandbox")
    await sock.send("env | grep -c canary-service; cat /proc/1/environ 2>/dev/null | grep -c canary-service\n")
    await sock.expect(r"[\r\n]0\r\n0\r\n")  # the service's secrets are not in a terminal's environment
    await sock.resize(120, 40)
    await sock.send("stty size\n")
    await sock.expect(r"40 120")
    await sock.send("sleep 30; echo not-interrupted\n")
    await asyncio.sleep(0.5)
    await sock.send(b"\x03")  # Ctrl-C reaches the foreground job through the line discipline
    await sock.send("echo after-ctrl-c\n")
    await sock.expect(r"[\r\n]after-ctrl-c")
    assert not re.search(r"[\r\n]not-interrupted", sock.text())
    await sock.close()  # the shell survives a dropped connection ...
    await sock.closed.wait()
    # The server lets go of the socket just after its close frame: wait (bounded) for it to say so.
    for _ in range(200):
        listed = (await api.get("/api/terminals")).json()
        if not listed or listed[0]["attached"] is False:
            break
        await asyncio.sleep(0.05)
    assert [t["id"] for t in listed] == [term["id"]] and listed[0]["attached"] is False
    again = await attach(wss, server.url, term["id"])  # ... and a reattach shows the scroll-back
    await again.expect(r"after-ctrl-c")
    await again.send("echo bye; exit 3\n")
    assert (await again.control("exit"))["exit"] == 3
    await again.closed.wait()
    assert again.ws.close_code == 1000
    assert (await api.get(f"/api/terminals/{term['id']}")).status_code == 404
    await until(lambda: not leftovers(server.home))


async def test_sandbox_terminal_has_the_sandbox_profile(server: LiveServer, api: httpx.AsyncClient,
                                                        wss: aiohttp.ClientSession) -> None:
    term = await open_terminal(api, backend="sandbox")
    sock = await attach(wss, server.url, term["id"])
    await sock.send("cat /etc/hostname; touch /usr/x 2>&1; ls /root 2>&1; echo $HOME; "
                    "env | grep -c AGENT_MANAGER_TAG; echo done-$((1+1))\n")
    await sock.expect(r"done-2")
    out = sock.text()
    assert "sandbox" in out and "Read-only file system" in out and "No such file or directory" in out
    assert "/workspace" in out
    await sock.close()
    response = await api.delete(f"/api/terminals/{term['id']}")
    assert response.status_code == 204
    await until(lambda: not leftovers(server.home))


async def test_delete_kills_the_whole_tree(server: LiveServer, api: httpx.AsyncClient,
                                           wss: aiohttp.ClientSession) -> None:
    term = await open_terminal(api, backend="local")
    sock = await attach(wss, server.url, term["id"])
    await sock.send("setsid sleep 7141 & (trap '' HUP TERM INT; sleep 7142) & echo started\n")
    await sock.expect(r"[\r\n]started")
    await until(lambda: len(leftovers(server.home)) >= 3)
    assert (await api.delete(f"/api/terminals/{term['id']}")).status_code == 204
    assert (await sock.control("exit"))["exit"] is not None
    await until(lambda: not leftovers(server.home))
    assert (await api.delete(f"/api/terminals/{term['id']}")).status_code == 404


async def test_agent_cli_runs_interactively(server: LiveServer, api: httpx.AsyncClient,
                                            wss: aiohttp.ClientSession) -> None:
    created = await api.post("/api/agents", json={"name": "catter", "kind": "generic", "command": "cat",
                                                  "args": ["{prompt}"], "env": {"GREETING": "x"}})
    assert created.status_code == 201, created.text
    term = await open_terminal(api, agent="catter", backend="local")
    assert term["command"] == "cat"  # the prompt placeholder is dropped: no prompt, interactive
    sock = await attach(wss, server.url, term["id"])
    await sock.send("hello cat\n")
    await sock.expect(r"hello cat\r\nhello cat")  # the terminal's echo, then cat's copy
    await sock.send(b"\x04")  # Ctrl-D: end of input, cat exits 0
    assert (await sock.control("exit"))["exit"] == 0


async def test_run_workspace_and_unknown_run(server: LiveServer, api: httpx.AsyncClient,
                                             wss: aiohttp.ClientSession) -> None:
    await api.post("/api/agents", json={"name": "echoer", "kind": "generic", "command": "echo",
                                        "args": ["{prompt}"]})
    run = (await api.post("/api/runs", json={"agent": "echoer", "prompt": "hi", "backend": "local"})).json()
    assert (await api.post("/api/terminals", json={"run_id": "run_nope"})).status_code == 404
    bad = await api.post("/api/terminals", json={"cols": 0, "rows": 10**6})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"
    term = await open_terminal(api, run_id=run["id"])
    assert term["backend"] == "local"
    sock = await attach(wss, server.url, term["id"])
    await sock.send("pwd\n")
    await sock.expect(r"workspaces/agents/ag_")  # the agent's own directory
    await sock.close()
    await api.delete(f"/api/terminals/{term['id']}")


async def test_bad_frames_are_handled(server: LiveServer, api: httpx.AsyncClient,
                                      wss: aiohttp.ClientSession) -> None:
    term = await open_terminal(api, backend="local")
    sock = await attach(wss, server.url, term["id"])
    await sock.resize(0, 0)
    await sock.resize("a", None)
    await sock.ws.send_str("not json")
    await sock.ws.send_str(json.dumps({"ping": 7}))
    assert (await sock.control("pong"))["pong"] == 7
    assert len([c for c in sock.controls if "error" in c]) == 3
    await sock.resize(10_000, 10_000)  # clamped to the largest size every backend accepts
    await sock.send(b"echo up-$((6*7))\n")  # the shell is up (a ^C during its start-up would end it)
    await sock.expect(r"up-42")
    # Garbage typed into the shell. Without ^D: after the ^C before it empties the line, a ^D ends
    # any shell (EOF), which is right, and whether the tty flushed it with the ^C is a race.
    garbage = bytes(b for b in range(256) if b != 0x04)
    await sock.send(garbage * 4 + b"\x1b[999;999R\x00\xff\xfe")
    # What readline makes of the garbage (a half-read escape sequence or UTF-8 character) swallows
    # what follows it until bash has handled the ^C, a race with the next bytes typed: the check
    # is typed again (after ^C and ^U, which empty the line) until the shell runs it.
    for attempt in range(5):
        await sock.send(b"\x03")
        await asyncio.sleep(0.3 * (attempt + 1))
        await sock.send(b"\x15stty size\n")
        with contextlib.suppress(AssertionError):
            await sock.expect(r"1000 1000", timeout=3)
            break
    else:
        raise AssertionError(f"the shell never ran stty size: {sock.text()[-2000:]!r}")
    await sock.ws.send_bytes(b"x" * ((1 << 20) + 1))  # one frame above the limit closes the socket
    await sock.closed.wait()
    assert sock.ws.close_code == 1009
    assert (await api.get(f"/api/terminals/{term['id']}")).status_code == 200  # the shell lives on
    await api.delete(f"/api/terminals/{term['id']}")


async def test_client_that_never_reads_does_not_fill_memory(server: LiveServer, api: httpx.AsyncClient,
                                                            wss: aiohttp.ClientSession) -> None:
    term = await open_terminal(api, backend="local")
    url = server.url.replace("http://", "ws://") + f"/api/terminals/{term['id']}/ws"
    ws = await wss.ws_connect(url, max_msg_size=0)
    await ws.send_bytes(b"head -c 300000000 /dev/zero | tr '\\0' x; echo finished-$((2+3))\n")

    def rss_kb() -> int:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    before = rss_kb()
    await asyncio.sleep(4)  # we read nothing: the PTY writer must be blocked, not buffered in the server
    growth_mb = (rss_kb() - before) / 1024
    assert growth_mb < 50, f"server RSS grew {growth_mb:.0f} MB for a client that never reads"
    await ws.close()
    sock = await attach(wss, server.url, term["id"])  # a fresh reader gets to the end
    await sock.send(b"\x03")
    await sock.send("echo alive-$((3+4))\n")
    await sock.expect(r"alive-7", timeout=60)
    await api.delete(f"/api/terminals/{term['id']}")


async def test_ownership_isolation_origin_and_limits(server: LiveServer, api: httpx.AsyncClient,
                                                     wss: aiohttp.ClientSession) -> None:
    alice = (await api.post("/api/users", json={"name": "alice", "trusted": True})).json()
    mallory = (await api.post("/api/users", json={"name": "mallory", "trusted": False})).json()
    as_alice = {"Authorization": f"Bearer {alice['token']}"}
    as_mallory = {"Authorization": f"Bearer {mallory['token']}"}
    term = (await api.post("/api/terminals", json={"backend": "local"}, headers=as_alice)).json()
    # another user neither sees nor attaches it
    assert (await api.get(f"/api/terminals/{term['id']}", headers=as_mallory)).status_code == 404
    assert (await api.get("/api/terminals", headers=as_mallory)).json() == []
    assert (await api.delete(f"/api/terminals/{term['id']}", headers=as_mallory)).status_code == 404
    other = await attach(wss, server.url, term["id"], headers=as_mallory)
    await other.closed.wait()
    assert other.ws.close_code == 4404 and not other.out
    # the admin sees everyone's
    assert [t["id"] for t in (await api.get("/api/terminals")).json()] == [term["id"]]
    # an untrusted user is never on the bare host
    refused = await api.post("/api/terminals", json={"backend": "local"}, headers=as_mallory)
    assert refused.status_code == 403
    isolated = await api.post("/api/terminals", json={}, headers=as_mallory)
    assert isolated.status_code == 201 and isolated.json()["backend"] == "sandbox"
    # the WebSocket upgrade passes the Host and Origin checks
    url = server.url.replace("http://", "ws://") + f"/api/terminals/{term['id']}/ws"
    for headers in ({**as_alice, "Host": "evil.example"},):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await wss.ws_connect(url, headers=headers)
        assert err.value.status == 403
    login = await api.post("/login", data={"token": alice["token"]})
    cookie = login.cookies.get("am_session") or login.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    async with aiohttp.ClientSession() as cookie_session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await cookie_session.ws_connect(url, headers={"Cookie": f"am_session={cookie}",
                                                          "Origin": "http://evil.example"})
        assert err.value.status == 403
        same = await cookie_session.ws_connect(url, headers={"Cookie": f"am_session={cookie}",
                                                             "Origin": server.url})
        await same.close()
    for t in (await api.get("/api/terminals")).json():
        await api.delete(f"/api/terminals/{t['id']}")


async def test_terminals_count_against_host_slots(tmp_path: Path, fake_path: Path) -> None:
    srv = start_server(tmp_path / "home", env={**FAST, "AGENT_MANAGER_MAX_CONCURRENT_RUNS": "1"})
    try:
        async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=30) as api:
            first = await open_terminal(api, backend="local")
            second = await api.post("/api/terminals", json={"backend": "sandbox"})
            assert second.status_code == 429 and "max_concurrent_runs" in second.json()["error"]["message"]
            await api.delete(f"/api/terminals/{first['id']}")
            third = await open_terminal(api, backend="sandbox")
            await api.delete(f"/api/terminals/{third['id']}")
    finally:
        stop_server(srv)


async def test_idle_timeout_and_recording(tmp_path: Path, fake_path: Path) -> None:
    env = {**FAST, "AGENT_MANAGER_TERMINAL_IDLE_TIMEOUT_S": "1", "AGENT_MANAGER_TERMINAL_RECORD": "on"}
    srv = start_server(tmp_path / "home", env=env)
    try:
        async with (httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=30) as api,
                    aiohttp.ClientSession(headers=srv.headers) as wss):
            term = await open_terminal(api, backend="local")
            assert term["recorded"] is True
            sock = await attach(wss, srv.url, term["id"])
            await sock.send("echo secret-$((40+2)) ; sleep 7151 &\n")
            await sock.expect(r"secret-42")
            await sock.close()
            await until(lambda: not leftovers(srv.home), timeout=10)  # closed 1 s after the client left
            for _ in range(100):
                if (await api.get(f"/api/terminals/{term['id']}")).status_code == 404:
                    break
                await asyncio.sleep(0.05)
            assert (await api.get(f"/api/terminals/{term['id']}")).status_code == 404
            audit = (await api.get("/api/audit", params={"action": "terminal.close"})).json()
            entry = audit["items"][0]
            assert entry["target"] == term["id"] and entry["details"]["reason"] == "idle timeout"
            cast = Path(entry["details"]["recording"]).read_text().splitlines()
            header, events = json.loads(cast[0]), [json.loads(line) for line in cast[1:]]
            assert header["version"] == 2
            typed = "".join(e[2] for e in events if e[1] == "i")
            assert "echo secret-$((40+2))" in typed
            assert "secret-42" in "".join(e[2] for e in events if e[1] == "o")
            assert oct(Path(entry["details"]["recording"]).stat().st_mode & 0o777) == "0o600"
    finally:
        stop_server(srv)


async def test_service_killed_with_terminals_open_leaves_nothing(tmp_path: Path, fake_path: Path) -> None:
    home = tmp_path / "home"
    srv = start_server(home, env=FAST)
    try:
        async with (httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=30) as api,
                    aiohttp.ClientSession(headers=srv.headers) as wss):
            for backend, marker in (("local", 7161), ("sandbox", 7162)):
                term = await open_terminal(api, backend=backend)
                sock = await attach(wss, srv.url, term["id"])
                await sock.send(f"(trap '' HUP TERM; sleep {marker}) & setsid sleep {marker + 10} & echo up\n")
                await sock.expect(r"[\r\n]up")
                await sock.close()
        await until(lambda: len(leftovers(home)) >= 4)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
    finally:
        stop_server(srv)
    again = start_server(home, env=FAST)  # the next start ends whatever a crash left behind
    try:
        await until(lambda: not leftovers(home))
        assert not any(b"sleep 716" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                       for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                       if Path(f"/proc/{pid}/cmdline").exists())
    finally:
        stop_server(again)


# -- Daytona, through the real SDK against the emulator's PTY ----------------------------------------


async def test_daytona_terminal(daytona_server: LiveServer, daytona_emulator: DaytonaEmulator) -> None:
    srv = daytona_server
    (srv.home / "workspaces" / "scratch").mkdir(parents=True, exist_ok=True)
    async with (httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=60) as api,
                aiohttp.ClientSession(headers=srv.headers) as wss):
        term = await open_terminal(api, backend="daytona", cols=90, rows=20)
        assert term["backend"] == "daytona" and term["sandbox_id"] in daytona_emulator.sandboxes
        sandbox = daytona_emulator.sandboxes[term["sandbox_id"]]
        assert sandbox.labels.get("terminal") == term["id"]
        sock = await attach(wss, srv.url, term["id"])
        await sock.send("echo day-$((6*7)); stty size; pwd\n")
        await sock.expect(r"day-42\s+20 90")
        await sock.expect(r"/workspace")
        await sock.resize(132, 43)
        await sock.send("stty size\n")
        await sock.expect(r"43 132")
        assert [p.cols for p in sandbox.ptys.values()] == [132]
        await sock.close()
        again = await attach(wss, srv.url, term["id"])
        await again.expect(r"day-42")  # scroll-back on reattach
        assert (await api.delete(f"/api/terminals/{term['id']}")).status_code == 204
        await again.control("exit")
        await until(lambda: term["sandbox_id"] in daytona_emulator.deleted)
        assert not daytona_emulator.sandboxes


async def test_daytona_terminal_ends_when_its_sandbox_goes(daytona_server: LiveServer,
                                                           daytona_emulator: DaytonaEmulator) -> None:
    srv = daytona_server
    async with (httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=60) as api,
                aiohttp.ClientSession(headers=srv.headers) as wss):
        term = await open_terminal(api, backend="daytona")
        sock = await attach(wss, srv.url, term["id"])
        await sock.send("echo ready\n")
        await sock.expect(r"[\r\n]ready")
        await daytona_emulator.remove(term["sandbox_id"])  # stopped/deleted under us (e.g. auto-stop)
        await sock.control("exit", timeout=30)
        await until(lambda: True)
        for _ in range(100):
            if (await api.get(f"/api/terminals/{term['id']}")).status_code == 404:
                break
            await asyncio.sleep(0.1)
        assert (await api.get(f"/api/terminals/{term['id']}")).status_code == 404


async def test_daytona_pty_that_never_connects(daytona_server: LiveServer,
                                               daytona_emulator: DaytonaEmulator) -> None:
    srv = daytona_server
    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers, timeout=60) as api:
        daytona_emulator.pty_fault = "error"
        failed = await api.post("/api/terminals", json={"backend": "daytona"})
        assert failed.status_code == 503, failed.text
        assert "terminal" in failed.json()["error"]["message"]
        daytona_emulator.pty_fault = "silent"  # the SDK waits 10 s for "connected"
        failed = await api.post("/api/terminals", json={"backend": "daytona"})
        assert failed.status_code == 503, failed.text
        await until(lambda: not daytona_emulator.sandboxes, timeout=15)  # each sandbox deleted again
        assert (await api.get("/api/terminals")).json() == []


