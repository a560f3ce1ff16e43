"""GET /api/runs/{id}/output: the run's printed bytes as text/plain, in event order, followed
live until the run ends, replayed whole once it has, resumable, with bounded server memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import LiveServer
from helpers import wait_run

from agent_manager.service import Service
from agent_manager.store.output_files import FIELD

# Pauses between writes make the order across the two pipes the order of arrival.
WRITER = r"""
import os, time
def w(fd, b):
    os.write(fd, b)
    time.sleep(0.05)
w(1, "héllo ".encode())
e = "😀中".encode()
w(1, e[:1]); w(1, e[1:3]); w(1, e[3:] + b"\n")   # one character split across reads
w(2, b"err one\n")
w(1, b"out two\n")
w(2, "ünï\n".encode())
w(1, ("big line \u2713 \"q\" back\\slash\t\x01\n" * 3000).encode())  # file-backed
w(2, b"last err")
"""
STDOUT = ("héllo 😀中\nout two\n" + "big line \u2713 \"q\" back\\slash\t\x01\n" * 3000).encode()
STDERR = "err one\nünï\nlast err".encode()
EVERYTHING = ("héllo 😀中\nerr one\nout two\nünï\n" + "big line \u2713 \"q\" back\\slash\t\x01\n" * 3000
              + "last err").encode()


async def _agent(client: httpx.AsyncClient, tmp_path: Path, name: str, script: str) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    r = await client.post("/api/agents", json={"name": name, "command": sys.executable,
                                               "args": [str(path), "{prompt}"]})
    assert r.status_code == 201, r.text


async def test_finished_run_replays_the_printed_bytes(client: httpx.AsyncClient, service: Service,
                                                      tmp_path: Path) -> None:
    await _agent(client, tmp_path, "mixed", WRITER)
    run = (await client.post("/api/runs", json={"agent": "mixed", "prompt": "go"})).json()
    assert (await wait_run(client, run["id"]))["status"] == "succeeded"
    rows = service.database.all("SELECT data FROM run_events WHERE run_id = ? AND type = 'output'", (run["id"],))
    assert any(f'"{FIELD}":' in row["data"] for row in rows), "the big chunk should be file-backed"

    r = await client.get(f"/api/runs/{run['id']}/output")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == EVERYTHING
    assert (await client.get(f"/api/runs/{run['id']}/output", params={"stream": "stdout"})).content == STDOUT
    assert (await client.get(f"/api/runs/{run['id']}/output", params={"stream": "stderr"})).content == STDERR

    # The same bytes as the event log's output events, in its order.
    events = (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 10000})).json()
    outputs = [e for e in events if e["type"] == "output"]
    assert "".join(e["data"]["text"] for e in outputs).encode() == EVERYTHING
    # Resume after an event, or after a byte count (even inside a character).
    middle = outputs[len(outputs) // 2]["seq"]
    after = (await client.get(f"/api/runs/{run['id']}/output", params={"after": middle})).content
    assert after == "".join(e["data"]["text"] for e in outputs if e["seq"] > middle).encode()
    for offset in (0, 7, 8, len(EVERYTHING) // 2, len(EVERYTHING) - 9, len(EVERYTHING), len(EVERYTHING) + 5):
        part = await client.get(f"/api/runs/{run['id']}/output", params={"offset": offset})
        assert part.content == EVERYTHING[offset:], offset


async def test_bad_requests_are_refused(client: httpx.AsyncClient, tmp_path: Path) -> None:
    assert (await client.get("/api/runs/run_nope/output")).status_code == 404
    assert (await client.get("/api/runs/..%2F..%2Fetc%2Fpasswd/output")).status_code == 404
    await _agent(client, tmp_path, "mixed", WRITER)
    run = (await client.post("/api/runs", json={"agent": "mixed", "prompt": "go"})).json()
    for params in ({"stream": "stdin"}, {"after": -1}, {"offset": "x"}):
        r = await client.get(f"/api/runs/{run['id']}/output", params=params)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", params
    await wait_run(client, run["id"])


GATED = r"""
import os, sys, time
os.write(1, "first line é\n".encode())
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
os.write(2, b"then stderr\n")
time.sleep(0.05)
os.write(1, b"second line\n")
"""


async def test_a_live_run_is_followed_until_it_ends(live_server: LiveServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with httpx.AsyncClient(base_url=live_server.url, headers=live_server.headers, timeout=30) as client:
        await _agent(client, tmp_path, "gated", GATED)
        run = (await client.post("/api/runs", json={"agent": "gated", "prompt": str(gate)})).json()
        received = b""

        async def read() -> None:
            nonlocal received
            async with client.stream("GET", f"/api/runs/{run['id']}/output") as response:
                assert response.status_code == 200
                async for piece in response.aiter_raw():
                    received += piece
                    if received == "first line é\n".encode():  # bytes arrived while the run waits
                        status = (await client.get(f"/api/runs/{run['id']}")).json()["status"]
                        assert status == "running"
                        gate.write_text("go")
        await asyncio.wait_for(read(), 30)  # the response ends by itself when the run finishes
        assert gate.exists()
        assert received == "first line é\nthen stderr\nsecond line\n".encode()
        assert (await client.get(f"/api/runs/{run['id']}")).json()["status"] == "succeeded"


BIG = r"""
import sys
line = b"0123456789" * 9 + b"abcdefghi\n"
for _ in range(int(sys.argv[1]) // len(line)):
    sys.stdout.buffer.write(line)
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_big_output_streams_with_bounded_server_memory(live_server: LiveServer, tmp_path: Path) -> None:
    size = 24 * 1024 * 1024 // 100 * 100
    async with httpx.AsyncClient(base_url=live_server.url, headers=live_server.headers, timeout=60) as client:
        await _agent(client, tmp_path, "big", BIG)
        run = (await client.post("/api/runs", json={"agent": "big", "prompt": str(size)})).json()
        assert (await wait_run(client, run["id"], timeout=120))["status"] == "succeeded"
        before = _rss_kb(live_server.proc.pid)
        peak = before
        total = lines = 0
        async with client.stream("GET", f"/api/runs/{run['id']}/output") as response:
            async for piece in response.aiter_raw(65536):
                total += len(piece)
                lines += piece.count(b"\n")
                if total < 8 * 1024 * 1024:
                    await asyncio.sleep(0.002)  # a slow reader: the server must wait, not buffer
                peak = max(peak, _rss_kb(live_server.proc.pid))
        assert total == size and lines == size // 100
        # Holding the whole output (or even half of it) would show here.
        assert (peak - before) / 1024 < 12, f"server RSS grew {(peak - before) / 1024:.1f} MB"
        events = (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 10000})).json()
        assert sum(len(e["data"]["text"]) for e in events if e["type"] == "output") == size
        json.dumps(events[-1])


async def test_cli_prints_the_raw_output(live_server: LiveServer, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, headers=live_server.headers, timeout=30) as client:
        await _agent(client, tmp_path, "mixed", WRITER)
        run = (await client.post("/api/runs", json={"agent": "mixed", "prompt": "go"})).json()
    env = {**os.environ, "AGENT_MANAGER_TOKEN": live_server.token, "AGENT_MANAGER_HOME": str(tmp_path / "cli")}
    cli = [sys.executable, "-m", "agent_manager", "--url", live_server.url, "runs", "output"]
    done = await asyncio.to_thread(subprocess.run, [*cli, run["id"]], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == EVERYTHING  # followed from the start of the run to its end
    only = await asyncio.to_thread(subprocess.run, [*cli, run["id"], "--stream", "stderr"], capture_output=True,
                                   env=env, timeout=60)
    assert only.stdout == STDERR
    missing = await asyncio.to_thread(subprocess.run, [*cli, "run_nope"], capture_output=True, env=env, timeout=60)
    assert missing.returncode != 0 and b"HTTP 404" in missing.stderr


async def test_rows_of_the_first_file_format_still_read(client: httpx.AsyncClient, service: Service,
                                                         tmp_path: Path) -> None:
    """Rows written before the raw-bytes format (``text_file``: JSON-escaped text) read as before."""
    from agent_manager.store.output_files import ESCAPED_FIELD, escape_bytes

    await _agent(client, tmp_path, "mixed", WRITER)
    run = (await client.post("/api/runs", json={"agent": "mixed", "prompt": "go"})).json()
    await wait_run(client, run["id"])
    events = (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 10000})).json()
    files = service.database.output_files
    assert files is not None
    path = files.path(run["id"])
    raw = path.read_bytes()
    escaped = b""
    with service.database.transaction() as conn:
        for row in conn.execute("SELECT seq, data FROM run_events WHERE run_id = ?", (run["id"],)).fetchall():
            data = json.loads(row["data"])
            if FIELD in data:
                offset, length = data.pop(FIELD)
                body = escape_bytes(raw[offset:offset + length])
                data[ESCAPED_FIELD] = [len(escaped), len(body)]
                escaped += body
                conn.execute("UPDATE run_events SET data = ? WHERE run_id = ? AND seq = ?",
                             (json.dumps(data), run["id"], row["seq"]))
    path.write_bytes(escaped)
    assert (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 10000})).json() == events
    assert (await client.get(f"/api/runs/{run['id']}/output")).content == EVERYTHING


async def test_the_stored_output_cap_applies(client: httpx.AsyncClient, tmp_path: Path) -> None:
    """Past max_stored_output_mb nothing more is stored, so nothing more is sent; the stored
    note about the dropped bytes is (on stderr)."""
    r = await client.patch("/api/settings", json={"max_stored_output_mb": 1})
    assert r.status_code == 200, r.text
    await _agent(client, tmp_path, "big", BIG)
    run = (await client.post("/api/runs", json={"agent": "big", "prompt": str(3 * 1024 * 1024)})).json()
    assert (await wait_run(client, run["id"]))["status"] == "succeeded"
    body = (await client.get(f"/api/runs/{run['id']}/output")).content
    stdout = (await client.get(f"/api/runs/{run['id']}/output", params={"stream": "stdout"})).content
    stderr = (await client.get(f"/api/runs/{run['id']}/output", params={"stream": "stderr"})).content
    assert 512 * 1024 < len(stdout) <= 1024 * 1024 and stdout == body[:len(stdout)]
    assert b"[agent-manager: output truncated:" in stderr and body == stdout + stderr
