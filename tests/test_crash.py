"""kill -9 of the real service during runs and an orchestration: the restart leaves no process
of those runs alive, marks them interrupted, keeps every event a client had received, and the
orchestration can be resumed to completion (notes C.12)."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from conftest import FAKES_BIN, LiveServer, start_server, stop_server
from helpers import pids_with_marker, wait_gone


class Listener(threading.Thread):
    """An SSE client; ``received`` is what it has acknowledged (fully read) so far."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, {**headers, "Accept": "text/event-stream"}
        self.received: list[tuple[int, str, dict[str, Any]]] = []

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(5, read=60)) as r:
                seq, event = 0, ""
                for line in r.iter_lines():
                    if line.startswith("id:"):
                        seq = int(line[3:])
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line[5:])
                        data.pop("at", None)  # SSE adds when the event was stored; the JSON log has it apart
                        self.received.append((seq, event, data))
        except httpx.HTTPError:
            pass  # the server died under us: that is the point

    def saw_text(self, needle: str) -> bool:
        return any(needle in str(data.get("text", "")) for _, _, data in list(self.received))


def _drain(server: LiveServer) -> list[str]:
    lines: list[str] = []

    def pump() -> None:
        assert server.proc.stdout is not None
        for line in server.proc.stdout:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill_9_during_runs_and_an_orchestration(tmp_path: Path, fake_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, env={"AGENT_MANAGER_KILL_GRACE_S": "0.3"})
    _drain(server)
    url, headers = server.url, server.headers
    tag = uuid.uuid4().hex[:10]
    markers = [f"crash-{tag}-a", f"crash-{tag}-b"]
    sleep_marker = f"2.{int(uuid.uuid4().int % 10**9):09d}"  # `sleep 2.<digits>` is unique enough
    sandbox_marker = f"4{int(uuid.uuid4().int % 10**6):06d}"
    second = None
    try:
        r = httpx.post(f"{url}/api/agents", headers=headers, json={
            "name": "spawner", "command": str(FAKES_BIN / "tree-spawner"), "args": ["--ignore-term", "{prompt}"]})
        assert r.status_code == 201, r.text
        runs = [httpx.post(f"{url}/api/runs", headers=headers, json={"agent": "spawner", "prompt": m}).json()
                for m in markers]
        sandboxed = None
        if shutil.which("bwrap"):
            httpx.post(f"{url}/api/agents", headers=headers, json={
                "name": "sbx", "command": "sleep", "backend": "sandbox", "network": False}).raise_for_status()
            sandboxed = httpx.post(f"{url}/api/runs", headers=headers,
                                   json={"agent": "sbx", "prompt": sandbox_marker}).json()
        plan = {"steps": [{"id": "slow", "action": "shell", "argv": ["sleep", sleep_marker]},
                          {"id": "after", "action": "shell", "argv": ["echo", "ok"], "depends_on": ["slow"]}]}
        orch = httpx.post(f"{url}/api/orchestrations", headers=headers, json={"plan": plan})
        assert orch.status_code == 201, orch.text
        orch_id = orch.json()["id"]

        listeners = [Listener(f"{url}/api/runs/{run['id']}/events", headers) for run in runs]
        orch_listener = Listener(f"{url}/api/orchestrations/{orch_id}/events", headers)
        for listener in [*listeners, orch_listener]:
            listener.start()
        for listener in listeners:
            _until(lambda lst=listener: lst.saw_text("ready"), 30, "the process trees")  # type: ignore[misc]
        for marker in markers:
            assert len(pids_with_marker(marker)) >= 5  # spawner, child, middle, grandchild, setsid child
        _until(lambda: pids_with_marker(sleep_marker), 20, "the orchestration's step")
        sandbox_running = bool(sandboxed) and _sandbox_up(url, headers, sandboxed, sandbox_marker)

        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        time.sleep(0.5)  # let the listeners notice
        acked = {run["id"]: list(lst.received) for run, lst in zip(runs, listeners, strict=True)}
        orch_acked = list(orch_listener.received)
        assert all(any(t == "output" for _, t, _ in events) for events in acked.values())
        if sandbox_running:  # bwrap --die-with-parent + pid namespace: gone without any sweep
            assert wait_gone(sandbox_marker, 5) == []

        second = start_server(home, env={"AGENT_MANAGER_KILL_GRACE_S": "0.3"})
        _drain(second)
        for marker in [*markers, sleep_marker]:
            assert wait_gone(marker, 5) == [], f"processes of {marker} survived the restart"
        h2 = second.headers
        for run in runs:
            final = httpx.get(f"{second.url}/api/runs/{run['id']}", headers=h2).json()
            assert final["status"] == "interrupted", final
            stored = httpx.get(f"{second.url}/api/runs/{run['id']}/events", headers=h2).json()
            kept = {(e["seq"], e["type"], json.dumps(e["data"], sort_keys=True)) for e in stored}
            for seq, type_, data in acked[run["id"]]:
                assert (seq, type_, json.dumps(data, sort_keys=True)) in kept, f"lost acknowledged event {seq}"
            assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
            assert stored[-1]["type"] == "run.finished" and stored[-1]["data"]["status"] == "interrupted"
        if sandboxed:
            assert httpx.get(f"{second.url}/api/runs/{sandboxed['id']}", headers=h2).json()["status"] in (
                "interrupted", "failed")
        stored_orch = httpx.get(f"{second.url}/api/orchestrations/{orch_id}/events", headers=h2).json()
        orch_kept = {e["seq"] for e in stored_orch}
        assert {seq for seq, _, _ in orch_acked} <= orch_kept
        view = httpx.get(f"{second.url}/api/orchestrations/{orch_id}", headers=h2).json()
        assert view["status"] == "interrupted", view
        resumed = httpx.post(f"{second.url}/api/orchestrations/{orch_id}/resume", headers=h2)
        assert resumed.status_code == 200, resumed.text
        _until(lambda: httpx.get(f"{second.url}/api/orchestrations/{orch_id}", headers=h2).json()["status"]
               != "running", 30, "the resumed orchestration")
        final_orch = httpx.get(f"{second.url}/api/orchestrations/{orch_id}", headers=h2).json()
        assert final_orch["status"] == "succeeded", final_orch
        assert [s["status"] for s in final_orch["steps"]] == ["succeeded", "succeeded"]
    finally:
        stop_server(server)
        if second is not None:
            stop_server(second)
        for marker in [*markers, sleep_marker, sandbox_marker]:
            for pid in pids_with_marker(marker):  # only ever our own markers
                with_suppress_kill(pid)


def _sandbox_up(url: str, headers: dict[str, str], run: dict[str, Any], marker: str) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/api/runs/{run['id']}", headers=headers).json()["status"]
        if status != "queued" and status != "running":
            return False  # the sandbox is not usable on this host; the local runs still count
        if status == "running" and pids_with_marker(marker):
            return True
        time.sleep(0.05)
    return False


def with_suppress_kill(pid: int) -> None:
    import contextlib
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
