"""Settings that behave: a real TOML writer (hostile strings survive a restart), runtime
changes that take effect at once or are refused with "needs a restart", environment-set
values shown and protected, backends refused until usable, bounded buffers and caches."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from conftest import in_process_client, running_service, start_server, stop_server
from fakes.daytona_emulator import DaytonaEmulator
from helpers import wait_run

from agent_manager.settings import MUTABLE_FIELDS, RESTART_FIELDS, Settings, load_settings, read_config_file

HOSTILE = ["planner\r", 'say "hi"', "back\\slash", "new\nline", "tab\tand\x00nul\x7f", "ünïcödé ☃",
           "]]\n[section]\nport = 1", "#not a comment", "'single'", "trailing\\"]


def test_config_file_survives_hostile_strings(tmp_path: Path) -> None:
    from agent_manager.settings import write_config_file

    for value in HOSTILE:
        write_config_file(tmp_path, {"default_planner": value, "daytona.image": value, "allowed_hosts": [value]})
        assert read_config_file(tmp_path) == {"default_planner": value, "daytona": {"image": value},
                                              "allowed_hosts": [value]}
        loaded = load_settings({"home": tmp_path}, environ={})
        assert loaded.default_planner == value and loaded.port == 8765
        assert loaded.value_of("daytona.image") == value


def test_hostile_settings_round_trip_through_a_restart(tmp_path: Path, fake_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        for value in HOSTILE:
            r = httpx.patch(f"{server.url}/api/settings", headers=server.headers,
                            json={"default_planner": value, "daytona": {"image": value}})
            assert r.status_code == 200, r.text
    finally:
        stop_server(server)
    server = start_server(home)  # used to fail with ConfigError on "planner\r"
    try:
        body = httpx.get(f"{server.url}/api/settings", headers=server.headers).json()
    finally:
        stop_server(server)
    assert body["default_planner"] == HOSTILE[-1] and body["sections"]["daytona"]["image"] == HOSTILE[-1]


def test_every_field_is_either_live_or_needs_a_restart() -> None:
    assert MUTABLE_FIELDS | RESTART_FIELDS == set(Settings.model_fields)
    assert not MUTABLE_FIELDS & RESTART_FIELDS


async def test_components_share_the_one_settings_object(settings: Settings) -> None:
    """Live fields take effect because every component reads the same object at use time."""
    async with running_service(settings) as svc:
        assert svc.runs.settings is svc.settings
        assert svc.orchestrations.settings is svc.settings
        for executor in svc.executors.values():
            assert executor.settings is svc.settings, executor.name  # type: ignore[attr-defined]


async def test_restart_fields_are_refused_with_needs_a_restart(client: httpx.AsyncClient) -> None:
    for name, value in (("port", 1), ("host", "0.0.0.0"), ("auth", False)):
        r = await client.patch("/api/settings", json={name: value})
        assert r.status_code == 422 and "needs a restart" in r.json()["error"]["message"], r.text
    body = (await client.get("/api/settings")).json()
    assert set(body["restart_required"]) == RESTART_FIELDS


async def test_runtime_changes_apply_to_the_next_run(client: httpx.AsyncClient, settings: Settings) -> None:
    await client.post("/api/agents", json={"name": "sleep", "command": sys.executable,
                                           "args": ["-c", "import time,sys; time.sleep(float(sys.argv[1]))",
                                                    "{prompt}"]})
    r = await client.patch("/api/settings", json={"stall_timeout_s": 0.5, "stall_kill": True,
                                                  "execution_mode": "local"})
    assert r.status_code == 200, r.text
    posted = await client.post("/api/runs", json={"agent": "sleep", "prompt": "30"})
    run = await wait_run(client, posted.json()["id"])
    assert run["status"] == "failed" and "no output for too long" in run["error"], run
    assert run["backend"] == "local" and "local" in run["route_reason"]


def _env_settings(tmp_path: Path, environ: dict[str, str]) -> Settings:
    settings = load_settings({"home": tmp_path / "home"}, environ=environ)
    settings.kill_grace_s = 0.3
    return settings


async def test_environment_set_values_are_shown_and_refused(tmp_path: Path, fake_path: Path) -> None:
    settings = _env_settings(tmp_path, {"AGENT_MANAGER_MAX_CONCURRENT_RUNS": "3", "DAYTONA_TARGET": "eu"})
    async with running_service(settings) as svc, in_process_client(settings, svc) as client:
        body = (await client.get("/api/settings")).json()
        assert body["from_env"] == {"max_concurrent_runs": "AGENT_MANAGER_MAX_CONCURRENT_RUNS",
                                    "daytona.target": "DAYTONA_TARGET"}
        assert "daytona.target" not in body["mutable"] and "daytona.image" in body["mutable"]
        assert "max_concurrent_runs" not in body["mutable"]
        r = await client.patch("/api/settings", json={"max_concurrent_runs": 5})
        assert r.status_code == 409 and "AGENT_MANAGER_MAX_CONCURRENT_RUNS" in r.json()["error"]["message"]
        # A form that sends the value back unchanged is fine, and does not store it.
        r = await client.patch("/api/settings", json={"max_concurrent_runs": 3, "heavy_cpu": 3})
        assert r.status_code == 200, r.text
    assert read_config_file(settings.home) == {"heavy_cpu": 3}


async def test_daytona_mode_is_refused_until_configured(client: httpx.AsyncClient, settings: Settings) -> None:
    r = await client.patch("/api/settings", json={"execution_mode": "daytona"})
    assert r.status_code == 422 and "daytona.api_key" in r.json()["error"]["message"]
    # The detail carries its own sentence: the Settings page shows it under the field.
    [detail] = r.json()["error"]["details"]
    assert detail["field"] == "execution_mode" and detail["message"].startswith("daytona needs setting up first: ")
    assert settings.execution_mode == "auto"
    assert "execution_mode" not in read_config_file(settings.home)


async def test_daytona_client_pool_and_sweep_follow_settings(tmp_path: Path, fake_path: Path,
                                                             daytona_emulator: DaytonaEmulator,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """Configured at runtime (no restart): the next run uses Daytona; a new URL and key switch
    to another Daytona at once; the warm pool fills and trims as the setting changes."""
    second = DaytonaEmulator(tmp_path_factory.mktemp("second-daytona"), api_key="second-key")
    await second.start()
    settings = Settings(home=tmp_path / "home", kill_grace_s=0.3, daytona={"create_timeout_s": 10})
    try:
        async with running_service(settings) as svc, in_process_client(settings, svc) as client:
            await client.post("/api/agents", json={"name": "sh", "command": "sh", "args": ["-c", "echo ok", "sh"],
                                                   "backend": "daytona"})
            r = await client.patch("/api/settings", json={"daytona": {"api_key": daytona_emulator.api_key,
                                                                      "api_url": daytona_emulator.api_url,
                                                                      "target": "us"}, "execution_mode": "daytona"})
            assert r.status_code == 200, r.text
            posted = await client.post("/api/runs", json={"agent": "sh", "prompt": "x"})
            run = await wait_run(client, posted.json()["id"])
            assert run["status"] == "succeeded" and run["backend"] == "daytona", run
            for _ in range(200):  # the sandbox is deleted right after the run ends, not before
                if daytona_emulator.deleted:
                    break
                await asyncio.sleep(0.05)
            assert daytona_emulator.deleted and not second.requests
            # The older flat names still work.
            r = await client.patch("/api/settings", json={"daytona_api_key": second.api_key,
                                                          "daytona_api_url": second.api_url})
            assert r.status_code == 200
            posted = await client.post("/api/runs", json={"agent": "sh", "prompt": "x"})
            run = await wait_run(client, posted.json()["id"])
            assert run["status"] == "succeeded", run
            for _ in range(200):
                if second.deleted:
                    break
                await asyncio.sleep(0.05)
            assert second.deleted == [run["sandbox_id"]]
            # The warm pool follows its setting, on the Daytona now configured.
            assert (await client.patch("/api/settings", json={"daytona": {"warm_pool": 2}})).status_code == 200
            for _ in range(600):
                if len(second.sandboxes) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(second.sandboxes) == 2
            assert (await client.patch("/api/settings", json={"daytona.warm_pool": 0})).status_code == 200
            for _ in range(600):
                if not second.sandboxes:
                    break
                await asyncio.sleep(0.05)
            assert not second.sandboxes
    finally:
        await second.stop()


async def test_failed_sandbox_probe_is_retried(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_manager.executors import sandbox
    from agent_manager.executors.base import Availability

    executor = sandbox.SandboxExecutor(settings, "am-test-probe", sandbox.SYSTEM_PATH)
    results = [Availability(False, "transient: fork failed"), Availability(True)]
    calls = []

    async def probe() -> Availability:
        calls.append(1)
        return results[len(calls) - 1]

    monkeypatch.setattr(executor, "_probe", probe)
    assert not (await executor.available()).ok
    assert not (await executor.available()).ok and len(calls) == 1  # cached for a short while
    monkeypatch.setattr(sandbox, "PROBE_RETRY_S", 0.0)
    executor._retry_at = 0.0
    assert (await executor.available()).ok and len(calls) == 2
    assert (await executor.available()).ok and len(calls) == 2  # success stays cached


# -- bounded buffers --------------------------------------------------------------------------

def test_json_parser_line_buffer_is_bounded() -> None:
    from agent_manager.agents import get_kind
    from agent_manager.agents.base import MAX_LINE_CHARS

    parser = get_kind("gemini").parser()
    chunk = "x" * (1024 * 1024)
    for _ in range(MAX_LINE_CHARS // len(chunk) + 4):
        parser.feed("stdout", chunk)
        assert len(parser._partial.get("stdout", "")) <= MAX_LINE_CHARS + len(chunk)
    # The rest of the oversized line is dropped at its newline; the next line parses.
    line = '{"type":"message","role":"assistant","content":"after","delta":true}\n'
    events = parser.feed("stdout", "tail of the long line\n" + line)
    assert [e.data.get("text") for e in events if e.type == "message"] == ["after"]


def test_event_log_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_manager import events
    from agent_manager.store import Database

    monkeypatch.setattr(events, "LAST_SEQ_CACHE", 10)
    db = Database(tmp_path / "db.sqlite")
    db.migrate()
    log = events.EventLog(db, "run_events", "run_id")
    for i in range(50):
        log.append(f"run-{i}", "output", {"text": "x"})
        log.append(f"run-{i}", "output", {"text": "y"})
    assert len(log._last) <= 10
    assert all(log.last_seq(f"run-{i}") == 2 for i in range(50))  # evicted entries re-read correctly
    assert log.append("run-0", "output", {}) == 3
    db.close()


async def test_daytona_output_queue_is_bounded() -> None:
    import concurrent.futures

    from agent_manager.executors.base import ExecSpec
    from agent_manager.executors.daytona_command import OUTPUT_QUEUE_CHUNKS, DaytonaExecution
    from agent_manager.executors.daytona_loop import DaytonaLoop, Handoff

    bridge = DaytonaLoop("test-loop")
    outlet: Handoff[object] = Handoff(bridge, OUTPUT_QUEUE_CHUNKS)
    execution = DaytonaExecution(None, SimpleNamespace(id="sb-1"), ExecSpec(argv=["true"]), "run-1",  # type: ignore[arg-type]
                                 outlet, concurrent.futures.Future())  # type: ignore[arg-type]

    async def fill() -> None:
        for i in range(OUTPUT_QUEUE_CHUNKS - 1):
            await execution._emit("stdout", f"{i}\n")
    await bridge.run(fill())
    emitting = asyncio.create_task(bridge.run(execution._emit("stdout", "the last that fits\n")))
    for _ in range(500):  # the follower waits for the reader instead of queueing more
        if outlet._blocked:
            break
        await asyncio.sleep(0.01)
    assert outlet._blocked and not emitting.done()
    reader = outlet.batches()
    taken: list[str] = []
    while not emitting.done() and len(taken) < OUTPUT_QUEUE_CHUNKS:  # the reader takes the backlog...
        taken += [chunk.text for chunk in await asyncio.wait_for(anext(reader), 5)]  # type: ignore[attr-defined]
    await asyncio.wait_for(emitting, 5)  # ...so there is room again
    assert taken[:2] == ["0\n", "1\n"]
    await reader.aclose()
    await bridge.close()


def test_settings_page_shows_environment_set_values_read_only(tmp_path: Path, fake_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright
    from ui_harness import CHROMIUM_ARGS, open_ui

    server = start_server(tmp_path / "home", env={"AGENT_MANAGER_MAX_CONCURRENT_RUNS": "3"})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                ui = open_ui(browser, server)
                ui.go("/settings")
                pinned = ui.page.locator("input[name=max_concurrent_runs]")
                expect(pinned).to_be_disabled()
                expect(pinned).to_have_value("3")
                expect(ui.page.locator(".field", has=pinned)).to_contain_text("AGENT_MANAGER_MAX_CONCURRENT_RUNS")
                # Saving other changes works and does not try to change the pinned one.
                ui.page.locator("input[name=heavy_cpu]").fill("5")
                ui.page.get_by_role("button", name="Save settings").click()
                expect(ui.page.get_by_text("Settings saved")).to_be_visible()
                assert ui.unexpected_errors() == []
            finally:
                browser.close()
        body = httpx.get(f"{server.url}/api/settings", headers=server.headers).json()
        assert body["heavy_cpu"] == 5 and body["max_concurrent_runs"] == 3
    finally:
        stop_server(server)


def _another_value(name: str, current: object) -> object:
    """A valid value different from ``current`` for the setting ``name``."""
    field = Settings.model_fields[name]
    annotation = str(field.annotation)
    if name == "execution_mode":
        return "local" if current != "local" else "auto"
    if isinstance(current, bool):
        return not current
    if isinstance(current, int | float) and not isinstance(current, bool):
        try:
            Settings(**{name: current + 1})
            return current + 1
        except ValueError:
            return current - 1
    if "list" in annotation:
        return ["agents.example.lan"]
    if "SecretStr" in annotation:
        return "a-new-secret"
    return "another_value"


async def test_every_live_setting_changes_at_once(client: httpx.AsyncClient, service: object) -> None:
    svc = service
    body = (await client.get("/api/settings")).json()
    core = [name for name in body["mutable"] if "." not in name]
    for name in sorted(core):
        value = _another_value(name, body[name])
        r = await client.patch("/api/settings", json={name: value})
        assert r.status_code == 200, (name, value, r.text)
        assert r.json()[name] == value, name
        assert getattr(svc.settings, name) == value, name  # type: ignore[attr-defined]
    saved = read_config_file(svc.settings.home)  # type: ignore[attr-defined]
    assert set(saved) >= set(core)
    # Backend sections (exercised against the emulator / by the sandbox tests): stored in tables.
    r = await client.patch("/api/settings", json={"sandbox": {"tmp_mb": 64}, "daytona": {"image": "img:1"}})
    assert r.status_code == 200, r.text
    assert r.json()["sections"]["sandbox"]["tmp_mb"] == 64
    assert svc.settings.section("sandbox").tmp_mb == 64  # type: ignore[attr-defined]
    saved = read_config_file(svc.settings.home)  # type: ignore[attr-defined]
    assert saved["sandbox"] == {"tmp_mb": 64} and saved["daytona"] == {"image": "img:1"}


async def test_sandbox_settings_change_reprobes(client: httpx.AsyncClient, service: object,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_manager.executors.base import Availability

    sandbox = service.executors["sandbox"]  # type: ignore[attr-defined]
    calls = []

    async def probe() -> Availability:
        calls.append(1)
        return Availability(True)

    monkeypatch.setattr(sandbox, "_probe", probe)
    sandbox.forget_probe()
    assert (await sandbox.available()).ok and (await sandbox.available()).ok and len(calls) == 1
    assert (await client.patch("/api/settings", json={"sandbox": {"memory_mb": 1024}})).status_code == 200
    assert (await sandbox.available()).ok and len(calls) == 2
