"""The worked plugin example (examples/agent-manager-nice), installed with real pip, used end to end.

pip installs the package into a directory of its own (``--target``); the server subprocess
gets it on PYTHONPATH, which is all importlib.metadata needs to find its entry points. Then,
against that real server on a real port: the backend is listed and available, a run on it
streams while the agent is still running, cancel ends the whole tree, its extra agent kind
works, its own settings section is served, validated and used, the routing rules for users
hold, and a real Chromium offers it (and its settings) in the UI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, start_server, stop_server
from helpers import pids_with_marker, wait_gone
from playwright.sync_api import Browser, expect
from ui_harness import open_ui

EXAMPLE = Path(__file__).parent.parent / "examples" / "agent-manager-nice"
# Prints its own CPU niceness and I/O class, leaves a grandchild carrying the marker ($1, the
# prompt), then ticks for 20 s: long enough to see output live and to cancel it mid-way.
SLOW = ('echo "nice=$(cut -d" " -f19 /proc/$$/stat) io=$(ionice -p $$) uid=$(id -u)"; '
        'sh -c "sleep 300" "$1" & '
        'i=0; while [ $i -lt 100 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done')


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --target SITE`` of a copy of the example (pip builds in the
    source tree; the checkout stays untouched)."""
    source = tmp_path_factory.mktemp("src") / "agent-manager-nice"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "agent_manager_nice-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


@pytest.fixture(scope="module")
def server(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = os.pathsep.join(p for p in (str(installed), os.environ.get("PYTHONPATH", "")) if p)
    live = start_server(tmp_path_factory.mktemp("nice") / "home",
                        env={"PYTHONPATH": path, "AGENT_MANAGER_KILL_GRACE_S": "0.3"})
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=15) as client:
        yield client


def _wait(api: httpx.Client, run_id: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/api/runs/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return dict(run)
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


def test_the_plugin_is_listed_and_available(api: httpx.Client) -> None:
    backends = {b["name"]: b for b in api.get("/api/backends").json()}
    nice = backends["nice"]
    assert nice["available"] and nice["loaded"] and not nice["builtin"] and nice["capabilities"] == ["host"]
    assert nice["plugin"] == "agent-manager-nice 0.1.0" and nice["title"].startswith("nice")
    assert list(backends)[:3] == ["local", "sandbox", "daytona"]  # built-ins first, the plugin after
    kinds = {k["name"]: k for k in api.get("/api/kinds").json()}
    assert kinds["stdin"]["plugin"] == "agent-manager-nice 0.1.0" and not kinds["stdin"]["builtin"]
    schema = api.get("/api/plans/schema").json()
    assert "nice" in schema["$defs"]["Step"]["properties"]["backend"]["anyOf"][0]["enum"]


def test_a_run_streams_live_and_cancel_ends_the_tree(api: httpx.Client) -> None:
    assert api.post("/api/agents", json={"name": "slow", "command": "sh", "args": ["-c", SLOW, "sh"],
                                         "backend": "nice"}).status_code == 201
    marker = f"nice-marker-{uuid.uuid4().hex}"
    run = api.post("/api/runs", json={"agent": "slow", "prompt": marker}).json()
    seen = ""
    with api.stream("GET", f"/api/runs/{run['id']}/events", headers={"Accept": "text/event-stream"},
                    timeout=30) as stream:
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "output":
                seen += json.loads(line[6:])["text"]
                if "tick 2" in seen:
                    break
    # Output arrived while the agent was still running: a stream, not a dump at the end.
    current = api.get(f"/api/runs/{run['id']}").json()
    assert current["status"] == "running" and current["backend"] == "nice"
    assert "nice requested by the agent" in current["route_reason"]
    assert "nice=19 io=idle" in seen, seen
    assert pids_with_marker(marker), "the agent and its grandchild should be running"
    cancelled = api.post(f"/api/runs/{run['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert wait_gone(marker) == []  # the whole tree, grandchild included


def test_its_agent_kind_takes_the_prompt_on_stdin(api: httpx.Client) -> None:
    r = api.post("/api/agents", json={"name": "count", "kind": "stdin", "command": "wc", "args": ["-w"],
                                      "backend": "nice"})
    assert r.status_code == 201, r.text
    run = api.post("/api/runs", json={"agent": "count", "prompt": "one two --three"}).json()
    done = _wait(api, str(run["id"]))
    assert done["status"] == "succeeded" and str(done["output"]).strip() == "3", done


def test_users_cannot_use_it_to_reach_the_service_user(api: httpx.Client) -> None:
    """A bare-host backend like local: an untrusted user is refused; a trusted non-admin never
    runs as the service's own OS user (the plugin cannot switch users, so not on it)."""
    api.post("/api/agents", json={"name": "who", "command": "sh", "args": ["-c", "id -u", "sh"]})
    for trusted in (False, True):
        user = api.post("/api/users", json={"name": f"u{int(trusted)}", "trusted": trusted}).json()
        headers = {"Authorization": f"Bearer {user['token']}"}
        r = api.post("/api/runs", json={"agent": "who", "prompt": "x", "backend": "nice"}, headers=headers)
        if not trusted:
            assert r.status_code == 403 and "must be isolated" in r.json()["error"]["message"]
            continue
        assert r.status_code == 201, r.text
        done = _wait(api, str(r.json()["id"]))
        if done["backend"] == "nice":
            assert done["status"] == "failed" and "cannot run this as" in str(done["error"]), done
        else:
            assert str(done["output"]).strip() != str(os.geteuid()), done


def test_its_settings_section_is_served_validated_and_used(api: httpx.Client) -> None:
    """The plugin's own section ([nice], NiceSettings) appears in the API with its description,
    is validated by its model (errors name nice.field), and the next run uses what was set."""
    body = api.get("/api/settings").json()
    assert body["sections"]["nice"] == {"niceness": 19, "io_class": "idle"}
    info = {s["name"]: s for s in body["section_info"]}["nice"]
    assert info["title"] == "nice (this host, lowest priority)" and info["env_prefix"] == "AGENT_MANAGER_NICE_"
    fields = {f["name"]: f for f in info["fields"]}
    assert (fields["niceness"]["type"], fields["niceness"]["minimum"], fields["niceness"]["maximum"]) == (
        "integer", 0, 19)
    assert fields["io_class"]["choices"] == ["idle", "best-effort"]
    r = api.patch("/api/settings", json={"nice": {"niceness": 40}})
    assert r.status_code == 422 and "nice.niceness" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["details"][0]["field"] == "nice.niceness"
    try:
        r = api.patch("/api/settings", json={"nice": {"niceness": 7, "io_class": "best-effort"}})
        assert r.status_code == 200 and r.json()["sections"]["nice"]["niceness"] == 7, r.text
        api.post("/api/agents", json={"name": "prio", "command": "sh", "backend": "nice", "args": [
            "-c", 'echo "nice=$(cut -d" " -f19 /proc/$$/stat) io=$(ionice -p $$)"', "sh"]})
        done = _wait(api, str(api.post("/api/runs", json={"agent": "prio", "prompt": "x"}).json()["id"]))
        assert done["status"] == "succeeded" and "nice=7 io=best-effort" in str(done["output"]), done
    finally:
        assert api.patch("/api/settings", json={"nice": {"niceness": 19, "io_class": "idle"}}).status_code == 200


def test_the_ui_offers_it(browser: Browser, server: LiveServer, api: httpx.Client) -> None:
    # The Run page offers a backend once an agent exists; make one so this test stands alone.
    if not api.get("/api/agents").json():
        assert api.post("/api/agents", json={"name": "ui-probe", "command": "echo"}).status_code == 201
    ui = open_ui(browser, server)
    try:
        ui.go("/agents/new")
        backend = ui.page.get_by_label("Backend")
        expect(backend.locator("option[value=nice]")).to_have_text("nice (this host, lowest priority)")
        expect(ui.page.get_by_label("Kind").locator("option[value=stdin]")).to_have_count(1)
        # Its kind has no default command, so the form says a command is required for it too.
        command_row = ui.page.locator(".field", has=ui.page.get_by_label("Command", exact=True))
        expect(command_row.locator(".hint")).to_contain_text("(required for generic, stdin: they have none)")
        ui.go("/run")
        expect(ui.page.get_by_label("Backend").locator("option[value=nice]")).to_have_count(1)
        ui.go("/terminal")
        expect(ui.page.get_by_label("Backend").locator("option[value=nice]")).to_have_count(1)
        ui.go("/settings")
        expect(ui.page.get_by_label("Execution mode").locator("option[value=nice]")).to_have_count(1)
        # Its settings section, drawn from the plugin's model.
        section = ui.page.locator("fieldset[data-section=nice]")
        expect(section.locator("legend")).to_have_text("nice (this host, lowest priority)")
        expect(section.get_by_label("Niceness")).to_have_attribute("max", "19")
        expect(section.get_by_label("I/O class").locator("option")).to_have_text(["idle", "best-effort"])
        expect(section).to_contain_text("CPU niceness of runs")
        assert ui.unexpected_errors() == []
    finally:
        ui.page.context.close()
        ui.api.close()


def test_the_cli_lists_it(server: LiveServer) -> None:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(server.home), "AGENT_MANAGER_URL": server.url}
    cli = [sys.executable, "-m", "agent_manager"]
    listed = subprocess.run([*cli, "backends"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("nice "))
    assert "host" in line and "available" in line and "[agent-manager-nice 0.1.0]" in line
    assert any(line.startswith("daytona ") and "unavailable: Daytona is not configured" in line
               for line in listed.stdout.splitlines())
    kinds = subprocess.run([*cli, "kinds"], env=env, capture_output=True, text=True, timeout=60)
    assert kinds.returncode == 0 and any(line.startswith("stdin ") for line in kinds.stdout.splitlines())
