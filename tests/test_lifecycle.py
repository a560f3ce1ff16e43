"""Starting and stopping the service as a user does: the data-directory lock, the recorded
endpoint, the token written only after a successful start, and a stop that does not wait
for open SSE streams or running agents."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, start_server, stop_server
from helpers import pids_with_marker, wait_gone

from agent_manager.instance import ENDPOINT_FILE, DataDirLock, read_endpoint


def cli(home: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "AGENT_MANAGER_HOME": str(home), **(env or {})}
    full.pop("AGENT_MANAGER_URL", None)
    return subprocess.run([sys.executable, "-m", "agent_manager", *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


def make_agent(server: LiveServer, name: str = "g") -> None:
    r = httpx.post(f"{server.url}/api/agents", json={"name": name, "kind": "gemini", "command": "gemini"},
                   headers=server.headers)
    assert r.status_code == 201, r.text


def test_clients_find_a_service_on_any_port(live_server: LiveServer) -> None:
    endpoint = live_server.home / ENDPOINT_FILE
    assert stat.S_IMODE(endpoint.stat().st_mode) == 0o600
    assert json.loads(endpoint.read_text())["url"] == live_server.url
    assert read_endpoint(live_server.home) == live_server.url
    # No --url, no port in the environment: the client reads the endpoint file.
    result = cli(live_server.home, "agents", "list")
    assert result.returncode == 0, result.stderr
    assert "cannot reach" not in result.stderr
    assert cli(live_server.home, "url").stdout.strip() == live_server.url


def test_a_service_of_another_data_dir_says_so(live_server: LiveServer, tmp_path: Path) -> None:
    """A newcomer's client with another HOME reaches a service on the default port that is not
    theirs: the answer names the data directory and the fix, not just "log in at /login"."""
    other = tmp_path / "other-home"
    result = cli(other, "--url", live_server.url, "agents", "list")
    assert result.returncode == 1
    assert str(other) in result.stderr and "--home" in result.stderr, result.stderr
    other.mkdir(exist_ok=True)
    (other / "admin-token").write_text("not-this-services-token\n")
    result = cli(other, "--url", live_server.url, "agents", "list")
    assert result.returncode == 1
    assert "refused the token" in result.stderr and "--home" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_endpoint_file_of_a_dead_service_is_ignored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ENDPOINT_FILE).write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": 1}))
    assert read_endpoint(home) is None  # nobody holds the lock


def test_second_service_on_the_same_data_dir_is_refused_and_harms_nothing(live_server: LiveServer,
                                                                          fake_path: Path) -> None:
    make_agent(live_server)
    run = httpx.post(f"{live_server.url}/api/runs", json={"agent": "g", "prompt": "SLEEP=30 second-service"},
                     headers=live_server.headers).json()
    deadline = time.monotonic() + 10
    while httpx.get(f"{live_server.url}/api/runs/{run['id']}", headers=live_server.headers).json()["status"] \
            != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    second = cli(live_server.home, "serve", "--port", "0", timeout=30)
    assert second.returncode != 0
    assert f"pid {live_server.proc.pid}" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    # The first service's run is untouched and its endpoint still recorded.
    assert httpx.get(f"{live_server.url}/api/runs/{run['id']}", headers=live_server.headers).json()["status"] \
        == "running"
    assert pids_with_marker("second-service")
    assert read_endpoint(live_server.home) == live_server.url


def test_lock_is_released_on_stop(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path)
    with pytest.raises(Exception, match=f"pid {os.getpid()}"):
        DataDirLock.acquire(tmp_path)
    lock.release()
    DataDirLock.acquire(tmp_path).release()


def _first_lines(home: Path) -> list[str]:
    """Start `serve`, collect its output up to the login line (or its exit), stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "serve", "--port", "0"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "AGENT_MANAGER_HOME": str(home)})
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "/login?token=" in line or "Log in with the token" in line:
                break
    finally:
        proc.terminate()
        proc.wait(20)
    return lines


def test_token_is_written_only_after_a_successful_start(tmp_path: Path, fake_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "agent-manager.db").mkdir()  # start-up fails after the settings were read
    failed = _first_lines(home)
    assert not any("listening on" in line for line in failed), failed
    assert not (home / "admin-token").exists()
    (home / "agent-manager.db").rmdir()
    # The next start is still the first one: it shows the login URL, with the token it wrote.
    lines = _first_lines(home)
    token = (home / "admin-token").read_text().strip()
    assert any(f"/login?token={token}" in line for line in lines), lines


def _watch(server: LiveServer, run_id: str, seen: list[str]) -> None:
    try:
        with httpx.stream("GET", f"{server.url}/api/runs/{run_id}/events",
                          headers={**server.headers, "Accept": "text/event-stream"}, timeout=None) as r:
            for line in r.iter_lines():
                if line.startswith("event:"):
                    seen.append(line.split(":", 1)[1].strip())
    except httpx.HTTPError:
        seen.append("<dropped>")
    seen.append("<closed>")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_ends_streams_and_interrupts_runs(tmp_path: Path, fake_path: Path, sig: int) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        make_agent(server)
        run = httpx.post(f"{server.url}/api/runs", json={"agent": "g", "prompt": "SLEEP=120 stop-me"},
                         headers=server.headers).json()
        orch = httpx.post(f"{server.url}/api/orchestrations", headers=server.headers, json={"plan": {
            "name": "p", "steps": [{"id": "a", "agent": "g", "prompt": "SLEEP=120 stop-me-too"}]}})
        assert orch.status_code == 201, orch.text
        seen: list[str] = []
        watcher = threading.Thread(target=_watch, args=(server, run["id"], seen), daemon=True)
        watcher.start()
        deadline = time.monotonic() + 15
        while not (pids_with_marker("stop-me") and pids_with_marker("stop-me-too") and "run.started" in seen):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        server.proc.send_signal(sig)
        # A generous bound (the old stop waited for the run: 120 s); not a timing assertion.
        out = server.proc.communicate(timeout=30)[0]
        watcher.join(10)
    finally:
        stop_server(server)
    assert "run.finished" in seen and seen[-1] == "<closed>", seen
    assert "Traceback" not in out, out
    assert "Waiting for connections to close" not in out
    assert not wait_gone("stop-me")
    assert not (home / ENDPOINT_FILE).exists()
    import sqlite3
    db = sqlite3.connect(home / "agent-manager.db")
    assert db.execute("SELECT status FROM runs WHERE id = ?", (run["id"],)).fetchone()[0] == "interrupted"
    assert {s for (s,) in db.execute("SELECT status FROM runs")} == {"interrupted"}
    assert db.execute("SELECT status FROM orchestrations").fetchone()[0] == "interrupted"


def test_a_run_cut_by_a_crash_ends_when_it_was_last_heard(tmp_path: Path, fake_path: Path) -> None:
    """After a SIGKILL the next start marks the run interrupted; its finish is the last sign of
    life, not the restart (which may come days later: the dashboard showed "4 m 52 s" for a run
    that died after 5 s)."""
    home = tmp_path / "home"
    server = start_server(home)
    try:
        make_agent(server)
        run = httpx.post(f"{server.url}/api/runs", json={"agent": "g", "prompt": "SLEEP=60 crash-cut"},
                         headers=server.headers).json()
        deadline = time.monotonic() + 15
        while httpx.get(f"{server.url}/api/runs/{run['id']}", headers=server.headers).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before_kill = time.time()
        server.proc.kill()
        server.proc.wait(10)
    finally:
        stop_server(server)
    wait_gone("crash-cut", 10)
    time.sleep(1.5)  # the restart comes measurably later than the crash
    again = start_server(home)
    try:
        final = httpx.get(f"{again.url}/api/runs/{run['id']}", headers=again.headers).json()
    finally:
        stop_server(again)
    from datetime import datetime

    finished = datetime.fromisoformat(final["finished_at"].replace("Z", "+00:00")).timestamp()
    assert final["status"] == "interrupted"
    assert finished <= before_kill, (final["finished_at"], before_kill)


@pytest.mark.parametrize("hard", [None, 300])
def test_serve_raises_its_open_files_limit(tmp_path: Path, hard: int | None) -> None:
    """A stock Linux session allows 1,024 open files, which a few hundred runs at once exceed
    (cli/serve.py): the service raises its own soft limit, and says so when the hard limit
    (here 300, or the inherited one) leaves it short."""
    inherited = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = f"ulimit -Sn 256 && ulimit -Hn {hard}" if hard else "ulimit -Sn 256"
    env = {**os.environ, "AGENT_MANAGER_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    proc = subprocess.Popen(["sh", "-c", f'{limits} && exec "$@"', "sh", sys.executable, "-m", "agent_manager",
                             "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        soft = next(int(row.split()[3]) for row in Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
                    if row.startswith("Max open files"))
    finally:
        proc.terminate()
        proc.wait(30)
    ceiling = hard or inherited
    expected = 65536 if ceiling == resource.RLIM_INFINITY else min(65536, ceiling)
    assert soft == expected, lines
    assert any("open files are limited to 300" in line for line in lines) == (hard == 300), lines
