"""`agent-manager run` ends its run when it is ended itself (SIGTERM, SIGHUP, Ctrl-C), keeps
fire-and-forget behind --detach, and says one clear line when the service goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, start_server, stop_server
from helpers import pids_with_marker, wait_gone


def _agent(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/api/agents", json={"name": "g", "kind": "gemini", "command": "gemini"},
                   headers=server.headers)
    assert r.status_code == 201, r.text


def _run_cli(server: LiveServer, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(server.home)}
    env.pop("AGENT_MANAGER_URL", None)
    return subprocess.Popen([sys.executable, "-m", "agent_manager", "run", *args], text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _latest_run(server: LiveServer) -> dict[str, object]:
    items = httpx.get(f"{server.url}/api/runs", headers=server.headers).json()["items"]
    return dict(items[0])


def _wait_running(server: LiveServer) -> None:
    """Until the client's run is running (the client's own argv carries the marker too)."""
    deadline = time.monotonic() + 15
    while True:
        items = httpx.get(f"{server.url}/api/runs", headers=server.headers).json()["items"]
        if items and items[0]["status"] == "running":
            return
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_cancel_the_run(live_server: LiveServer, sig: int) -> None:
    _agent(live_server)
    marker = f"cli-signal-{int(sig)}"
    proc = _run_cli(live_server, "g", f"SLEEP=60 {marker}")
    _wait_running(live_server)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, 128 + int(sig)), err
    assert "Traceback" not in err
    assert not wait_gone(marker, 10)
    assert _latest_run(live_server)["status"] == "cancelled"


def test_detach_returns_at_once_and_leaves_the_run_going(live_server: LiveServer) -> None:
    _agent(live_server)
    proc = _run_cli(live_server, "--detach", "g", "SLEEP=60 detached-run")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    run_id = out.strip()
    assert run_id.startswith("run")
    assert f"{live_server.url}/#/runs/{run_id}" in err  # where to follow it: the id alone leaves a newcomer stuck
    _wait_running(live_server)
    assert pids_with_marker("detached-run")
    run = httpx.get(f"{live_server.url}/api/runs/{run_id}", headers=live_server.headers).json()
    assert run["status"] in ("queued", "running")


def test_service_going_away_gives_one_line(tmp_path: Path, fake_path: Path) -> None:
    server = start_server(tmp_path / "home")
    try:
        _agent(server)
        proc = _run_cli(server, "g", "SLEEP=60 service-goes-away")
        _wait_running(server)
        server.proc.kill()  # no goodbye: the client sees the connection refused from now on
        server.proc.wait(10)
        _out, err = proc.communicate(timeout=60)
    finally:
        stop_server(server)
    assert proc.returncode == 1
    assert "Traceback" not in err and "httpx" not in err, err
    assert "lost the connection to the service" in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: lost the connection"), err


def test_stopped_while_its_stdout_is_full(live_server: LiveServer) -> None:
    """A run printing faster than its reader takes it (a pager, a stalled pipe), then SIGTERM:
    the command cancels and exits like any other time, with no abort at exit (a thread stopped
    inside a write to stdout would keep its lock: "Fatal Python error: could not acquire lock")."""
    r = httpx.post(f"{live_server.url}/api/agents", json={"name": "y", "kind": "generic", "command": "yes"},
                   headers=live_server.headers)
    assert r.status_code == 201, r.text
    marker = "cli-full-stdout"
    proc = _run_cli(live_server, "y", marker)
    _wait_running(live_server)
    time.sleep(1.5)  # nobody reads: the pipe is full and the command waits in a write
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Fatal Python error" not in err and "Traceback" not in err, err[-2000:]
    assert marker in out
    assert not wait_gone(marker, 10)
    assert _latest_run(live_server)["status"] == "cancelled"


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_timeout_must_be_a_finite_positive_number(tmp_path: Path, value: str) -> None:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(tmp_path), "AGENT_MANAGER_URL": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "agent_manager", "run", "--timeout", value, "a", "p"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "positive finite number" in result.stderr


def _orchestrate_cli(server: LiveServer, plan: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(server.home)}
    env.pop("AGENT_MANAGER_URL", None)
    return subprocess.Popen([sys.executable, "-m", "agent_manager", "orchestrate", str(plan)], text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _plan(tmp_path: Path, marker: str) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"name: long\nsteps:\n  - id: x\n    agent: g\n    prompt: 'SLEEP=60 {marker}'\n"
                    "  - id: y\n    agent: g\n    prompt: after\n    depends_on: [x]\n")
    return plan


def _latest_orchestration(server: LiveServer) -> dict[str, object]:
    items = httpx.get(f"{server.url}/api/orchestrations", headers=server.headers).json()["items"]
    return dict(items[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_cancel_the_orchestration(live_server: LiveServer, tmp_path: Path, sig: int) -> None:
    """`orchestrate` killed like `run` (a closed terminal, `timeout`) must not leave its steps going."""
    _agent(live_server)
    marker = f"orch-signal-{int(sig)}"
    proc = _orchestrate_cli(live_server, _plan(tmp_path, marker))
    _wait_running(live_server)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, 128 + int(sig)), err
    assert "Traceback" not in err
    assert not wait_gone(marker, 10)
    assert _latest_orchestration(live_server)["status"] == "cancelled"


def test_orchestrate_service_going_away_gives_one_line(tmp_path: Path, fake_path: Path) -> None:
    server = start_server(tmp_path / "home")
    try:
        _agent(server)
        proc = _orchestrate_cli(server, _plan(tmp_path, "orch-service-goes-away"))
        _wait_running(server)
        server.proc.kill()
        server.proc.wait(10)
        _out, err = proc.communicate(timeout=60)
    finally:
        stop_server(server)
    assert proc.returncode == 1
    assert "Traceback" not in err and "httpx" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: lost the connection"), err
    assert "orchestration" in lines[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_plan_ended_cancels_the_planner_run(live_server: LiveServer, sig: int) -> None:
    """`agent-manager plan` waits on POST /api/plans; whoever ends it (Ctrl-C, SIGTERM, or a
    SIGKILL that leaves only a closed connection), the planner run must not go on for its whole
    timeout with nobody to read its plan."""
    _agent(live_server)
    marker = f"plan-signal-{int(sig)}"
    env = {**os.environ, "AGENT_MANAGER_HOME": str(live_server.home)}
    env.pop("AGENT_MANAGER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "plan", f"SLEEP=60 {marker}", "--planner", "g"],
                            text=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_running(live_server)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, 128 + int(sig), -int(sig)), err
    assert "Traceback" not in err and "Aborted!" not in err, err
    assert not wait_gone(marker, 15)
    deadline = time.monotonic() + 15
    while _latest_run(live_server)["status"] not in ("cancelled", "failed", "succeeded"):
        assert time.monotonic() < deadline, _latest_run(live_server)
        time.sleep(0.1)
    assert _latest_run(live_server)["status"] == "cancelled"


class _SlowStart(BaseHTTPRequestHandler):
    """A service whose answer to the request that starts a run or an orchestration comes late
    (under load); it records the cancels it gets."""

    protocol_version = "HTTP/1.1"
    started = threading.Event()
    release = threading.Event()
    cancels: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._json({"name": "g", "kind": "generic", "command": "echo"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/cancel"):
            self.cancels.append(self.path)
            self._json({})
            return
        self.started.set()
        self.release.wait(10)
        self._json({"id": "r1" if self.path == "/api/runs" else "o1", "status": "queued", "name": "p",
                    "counts": {"total": 1}, "max_parallel": 1}, 201)


@pytest.mark.parametrize("command", ["run", "orchestrate"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopped_while_the_start_is_in_flight(tmp_path: Path, command: str, sig: int) -> None:
    """Stopped before the service answered: the command waits for the answer (the id), then
    cancels what the service had started, instead of leaving it going unseen."""
    _SlowStart.started, _SlowStart.release, _SlowStart.cancels = threading.Event(), threading.Event(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SlowStart)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\nsteps:\n  - id: x\n    agent: g\n    prompt: hi\n")
    args = ["run", "g", "hello"] if command == "run" else ["orchestrate", str(plan)]
    env = {**os.environ, "AGENT_MANAGER_HOME": str(tmp_path / "home"),
           "AGENT_MANAGER_URL": f"http://127.0.0.1:{httpd.server_address[1]}"}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "agent_manager", *args], text=True, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert _SlowStart.started.wait(30), "the start request never came"
        proc.send_signal(sig)
        time.sleep(0.3)  # the signal has arrived while the request waits for its answer
        assert proc.poll() is None, "it left without the answer"
        _SlowStart.release.set()
        _out, err = proc.communicate(timeout=30)
    finally:
        _SlowStart.release.set()
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode in (130, 128 + int(sig)), err
    assert "Traceback" not in err
    assert "stopping once the service has answered" in err
    assert _SlowStart.cancels == ["/api/runs/r1/cancel" if command == "run" else "/api/orchestrations/o1/cancel"]
