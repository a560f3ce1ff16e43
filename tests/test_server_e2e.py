"""The real server on a real port, with a real SSE client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
from conftest import LiveServer

SLOW = ("import sys, time\n"
        "for i in range(int(sys.argv[1])):\n"
        "    print(f'line {i}', flush=True); time.sleep(float(sys.argv[2]))\n")


def sse(response: httpx.Response) -> Any:
    seq, event, data = 0, "", ""
    for line in response.iter_lines():
        if line.startswith("id:"):
            seq = int(line[3:])
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif not line and event:
            yield seq, event, json.loads(data)
            event = ""


def make_slow(server: LiveServer, lines: int, pause: float) -> str:
    r = httpx.post(f"{server.url}/api/agents", headers=server.headers,
                   json={"name": "slow", "command": sys.executable, "args": ["-c", SLOW, "{prompt}", str(pause)]})
    assert r.status_code == 201, r.text
    r = httpx.post(f"{server.url}/api/runs", headers=server.headers, json={"agent": "slow", "prompt": str(lines)})
    return str(r.json()["id"])


def test_chunks_arrive_before_the_process_exits(live_server: LiveServer) -> None:
    run_id = make_slow(live_server, 6, 0.5)
    received: list[tuple[int, str, dict, float]] = []
    with httpx.stream("GET", f"{live_server.url}/api/runs/{run_id}/events",
                      headers={**live_server.headers, "Accept": "text/event-stream"}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for seq, event, data in sse(response):
            received.append((seq, event, data, time.monotonic()))
            if event == "output" and data["text"] == "line 0\n":
                status = httpx.get(f"{live_server.url}/api/runs/{run_id}", headers=live_server.headers).json()
                assert status["status"] == "running"  # we have line 0 while the agent still runs
    first_line_at = next(t for _, e, d, t in received if e == "output" and d["text"] == "line 0\n")
    finished_at = next(t for _, e, _, t in received if e == "run.finished")
    assert finished_at - first_line_at > 1.0  # the stream was live, not delivered at exit
    assert [s for s, *_ in received] == list(range(1, len(received) + 1))


def test_reconnect_gets_exactly_the_missed_events(live_server: LiveServer) -> None:
    run_id = make_slow(live_server, 12, 0.1)
    url = f"{live_server.url}/api/runs/{run_id}/events"
    headers = {**live_server.headers, "Accept": "text/event-stream"}
    first: list[int] = []
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        for seq, _event, _ in sse(response):
            first.append(seq)
            if len(first) == 4:
                break  # drop the connection mid-stream
    second: list[int] = []
    with httpx.stream("GET", url, headers={**headers, "Last-Event-ID": str(first[-1])}, timeout=30) as response:
        events = list(sse(response))
    second = [seq for seq, _, _ in events]
    assert events[-1][1] == "run.finished"
    assert first + second == list(range(1, second[-1] + 1))  # no gap, no duplicate
    # A finished run replays from the start and closes.
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        replay = [seq for seq, _, _ in sse(response)]
    assert replay == list(range(1, second[-1] + 1))


def test_cli_run_streams_and_returns_the_agents_exit_code(live_server: LiveServer) -> None:
    env = {"AGENT_MANAGER_HOME": str(live_server.home), "AGENT_MANAGER_URL": live_server.url, "PATH": _path()}
    cli = [sys.executable, "-m", "agent_manager"]
    added = subprocess.run([*cli, "agents", "add", "quitter", "--command", "sh", "--arg=-c",
                            "--arg=echo out; echo oops >&2; exit 7", "--arg", "sh"],
                           env=env, capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    result = subprocess.run([*cli, "run", "quitter", "go"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 7
    assert result.stdout == "out\n" and "oops" in result.stderr
    ok = subprocess.run([*cli, "run", "gemini-fake", "hi"], env=env, capture_output=True, text=True)
    assert ok.returncode != 0 and "not found" in ok.stderr
    subprocess.run([*cli, "agents", "add", "gem", "--kind", "gemini"], env=env, check=True, capture_output=True)
    ok = subprocess.run([*cli, "run", "gem", "hello there"], env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "Echo: hello there" in ok.stdout and "{" not in ok.stdout  # parsed, not raw
    listed = subprocess.run([*cli, "agents", "list"], env=env, capture_output=True, text=True)
    assert "quitter" in listed.stdout and "gem" in listed.stdout


def test_cli_detect_registers_installed_clis(live_server: LiveServer) -> None:
    env = {"AGENT_MANAGER_HOME": str(live_server.home), "AGENT_MANAGER_URL": live_server.url, "PATH": _path()}
    cli = [sys.executable, "-m", "agent_manager"]
    out = subprocess.run([*cli, "agents", "detect"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names = {a["name"] for a in httpx.get(f"{live_server.url}/api/agents", headers=live_server.headers).json()}
    assert {"gemini", "claude", "codex", "llm"} <= names  # the fakes on PATH
    again = subprocess.run([*cli, "agents", "detect"], env=env, capture_output=True, text=True)
    assert "already registered" in again.stdout


def test_cli_without_service_is_a_clear_error(tmp_path: Any) -> None:
    env = {"AGENT_MANAGER_HOME": str(tmp_path), "AGENT_MANAGER_URL": "http://127.0.0.1:9", "PATH": _path()}
    out = subprocess.run([sys.executable, "-m", "agent_manager", "agents", "list"], env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "cannot reach the service" in out.stderr


def test_serve_on_a_port_in_use_says_how_to_pick_another(tmp_path: Any) -> None:
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {"AGENT_MANAGER_HOME": str(tmp_path / "home"), "PATH": _path()}
        out = subprocess.run([sys.executable, "-m", "agent_manager", "serve", "--port", str(port)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "--port N" in out.stderr and "(0 = any free one)" in out.stderr


def _path() -> str:
    import os
    return os.environ["PATH"]


def test_cli_ctrl_c_cancels_the_run(live_server: LiveServer) -> None:
    import signal
    env = {"AGENT_MANAGER_HOME": str(live_server.home), "AGENT_MANAGER_URL": live_server.url, "PATH": _path()}
    cli = [sys.executable, "-m", "agent_manager"]
    subprocess.run([*cli, "agents", "add", "nap", "--command", "sleep"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*cli, "run", "nap", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 15
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = httpx.get(f"{live_server.url}/api/runs", headers=live_server.headers).json()["items"]
        if runs and runs[0]["status"] == "running":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    run = httpx.get(f"{live_server.url}/api/runs/{runs[0]['id']}", headers=live_server.headers).json()
    assert run["status"] == "cancelled"
