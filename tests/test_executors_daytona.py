"""DaytonaExecutor: the real ``daytona`` SDK against the emulator in tests/fakes.

Fixtures ``daytona_emulator``/``daytona_settings`` come from ``fakes.daytona_fixture``; the
emulator fixture fails a test that leaves any sandbox behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fakes.daytona_emulator import DaytonaEmulator
from pydantic import SecretStr

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors import daytona_api
from agent_manager.executors.base import Chunk, ExecSpec, Executor, Resources
from agent_manager.executors.daytona import DaytonaExecutor, build_command, env_payload, list_sandboxes, sweep
from agent_manager.executors.daytona_settings import daytona_section
from agent_manager.settings import Settings

PY = sys.executable
NASTY = (
    "it's \"quoted\" $HOME `id` $(id) ; rm -rf / && echo pwned | cat > x\n\ttab * ? [a] \\ ~ -- --flag 'é'"
)
ARGV_DUMP = "import json,sys; print(json.dumps(sys.argv[1:]))"


@pytest.fixture
async def executor(daytona_settings: Settings) -> AsyncIterator[DaytonaExecutor]:
    ex = DaytonaExecutor(daytona_settings, "inst-1", retry_base_s=0.01)
    yield ex
    await ex.close()


async def collect(execution: object) -> tuple[list[Chunk], int]:
    chunks = [c async for c in execution.output()]  # type: ignore[attr-defined]
    return chunks, await execution.wait()  # type: ignore[attr-defined]


def text(chunks: list[Chunk], stream: str) -> str:
    return "".join(c.text for c in chunks if c.stream == stream)


def test_built_command_keeps_a_nasty_prompt_as_one_argument() -> None:
    """The exact string sent to the daemon, run through a local ``sh -c``."""
    sentinel = "END-123"
    command = build_command([PY, "-c", ARGV_DUMP, NASTY, "--prompt=" + NASTY], "/tmp", None, sentinel)
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["/bin/sh", "-c", command],
        input=env_payload({"K": "v"}, sentinel),
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert json.loads(out.stdout) == [NASTY, "--prompt=" + NASTY]


def test_env_payload_defines_values_exactly_and_rejects_bad_names() -> None:
    value = "multi\nline 'quoted' $(id) `x` \\ end"
    command = build_command([PY, "-c", "import os; print(repr(os.environ['SECRET']))"], "/tmp", None, "S")
    out = subprocess.run(
        ["/bin/sh", "-c", command],
        input=env_payload({"SECRET": value}, "S"),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert out.stdout.strip() == repr(value)
    with pytest.raises(ExecutionError):
        env_payload({"BAD;NAME": "x"}, "S")


async def test_streams_live_split_exit_code_and_argv(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    script = (
        "import sys,time\nprint('first', flush=True)\nprint('oops', file=sys.stderr, flush=True)\n"
        "time.sleep(1.0)\nprint('last', flush=True)\nsys.exit(3)"
    )
    execution = await executor.start(ExecSpec(argv=[PY, "-c", script], env={"A": "1"}))
    assert execution.info["sandbox_id"] in daytona_emulator.sandboxes
    assert isinstance(executor, Executor)
    stream = execution.output()
    first = await asyncio.wait_for(stream.__anext__(), 5)
    assert first == Chunk("stdout", "first\n")
    assert not execution.exit_code.done()  # received before the exit
    rest = [c async for c in stream]
    assert text(rest, "stderr") == "oops\n" and text(rest, "stdout") == "last\n"
    assert await execution.wait() == 3
    assert daytona_emulator.sandboxes == {}
    assert executor.live == 0 and executor.sandboxes_live() == 0
    assert executor.create_seconds is not None
    created = {s.name: s.value for m in executor.create_seconds.collect() for s in m.samples}
    assert created["agent_manager_sandbox_create_seconds_count"] == 1


async def test_nasty_prompt_survives_the_sandbox_shell(executor: DaytonaExecutor) -> None:
    execution = await executor.start(ExecSpec(argv=[PY, "-c", ARGV_DUMP, NASTY]))
    chunks, code = await collect(execution)
    assert code == 0 and json.loads(text(chunks, "stdout")) == [NASTY]


async def test_secrets_reach_the_process_only(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    secret = "s3cr3t value with 'quotes' and\nnewline"
    argv = [
        PY,
        "-c",
        "import hashlib,os; print(hashlib.sha256(os.environ['API_TOKEN'].encode()).hexdigest())",
    ]
    execution = await executor.start(ExecSpec(argv=argv, env={"API_TOKEN": secret}))
    chunks, code = await collect(execution)
    assert code == 0 and text(chunks, "stdout") == hashlib.sha256(secret.encode()).hexdigest() + "\n"
    assert "s3cr3t" not in text(chunks, "stdout")  # the input was not echoed into the log
    wire = json.dumps([r[2] for r in daytona_emulator.requests if r[2] is not None and "data" not in r[2]])
    assert "s3cr3t" not in wire  # not in create params, not in the command line
    create = next(r[2] for r in daytona_emulator.requests if r[:2] == ("POST", "/api/sandbox"))
    assert create["env"] == {}


async def test_create_params_are_explicit(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    settings = daytona_settings.with_changes({"daytona.image": "python:3.12-slim", "daytona.auto_stop_minutes": 7})
    ex = DaytonaExecutor(settings, "inst-1")
    try:
        spec = ExecSpec(
            argv=["true"],
            network=False,
            labels={"job": "j1", "agent-manager": "spoof"},
            resources=Resources(cpu=2, memory_mb=3000, disk_gb=5),
        )
        _, code = await collect(await ex.start(spec))
    finally:
        await ex.close()
    assert code == 0
    body = next(r[2] for r in daytona_emulator.requests if r[:2] == ("POST", "/api/sandbox"))
    assert (
        body["networkBlockAll"] is True and body["autoStopInterval"] == 7 and body["autoDeleteInterval"] == 0
    )
    assert body["labels"]["agent-manager"] == "inst-1" and body["labels"]["job"] == "j1"
    assert body["labels"]["agent-manager-run"]
    assert (body["cpu"], body["memory"], body["disk"]) == (2, 3, 5)


async def test_files_in_and_outputs_back(executor: DaytonaExecutor, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "in.txt").write_text("from workspace")
    script = (
        "import pathlib,sys\nprint(open('src/in.txt').read(), open('extra.cfg').read(), sys.stdin.read())\n"
        "pathlib.Path('out').mkdir()\npathlib.Path('out/result.txt').write_text('done')"
    )
    spec = ExecSpec(
        argv=[PY, "-c", script],
        workspace=ws,
        files={"extra.cfg": b"cfg"},
        stdin=b"from stdin",
        outputs=["out/result.txt", "never-written.txt"],
    )
    execution = await executor.start(spec)
    chunks, code = await collect(execution)
    assert code == 0, text(chunks, "stderr")
    assert text(chunks, "stdout") == "from workspace cfg from stdin\n"
    assert (ws / "out" / "result.txt").read_text() == "done"
    assert execution.info["missing_outputs"] == "never-written.txt"


async def test_missing_executable_is_named(executor: DaytonaExecutor) -> None:
    execution = await executor.start(ExecSpec(argv=["no-such-agent-cli", "x"]))
    with pytest.raises(ExecutionError, match="no-such-agent-cli"):
        await collect(execution)


async def test_cancel_ends_a_running_command_and_deletes_the_sandbox(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    """What the run layer does on timeout: cancel() while the command runs."""
    execution = await executor.start(
        ExecSpec(argv=[PY, "-c", "print('up', flush=True); import time; time.sleep(60)"])
    )
    stream = execution.output()
    assert (await asyncio.wait_for(stream.__anext__(), 5)).text == "up\n"
    assert daytona_emulator.running_pids()
    await asyncio.wait_for(execution.cancel(), 10)
    assert await asyncio.wait_for(execution.wait(), 10) == -9
    assert [c async for c in stream] == []
    assert daytona_emulator.sandboxes == {} and daytona_emulator.running_pids() == []
    await execution.cancel()  # safe twice


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_rate_limits_and_server_errors_are_retried(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator, status: int
) -> None:
    daytona_emulator.fail_next("POST /api/sandbox", 2, status)
    daytona_emulator.fail_next("POST /toolbox/*/files/bulk-upload", 1, status)
    daytona_emulator.fail_next("GET /toolbox/*/process/session/*/command/*", 1, status)
    daytona_emulator.fail_next("DELETE /api/sandbox/*", 2, status)
    _, code = await collect(await executor.start(ExecSpec(argv=["true"], files={"a": b"1"})))
    assert code == 0 and daytona_emulator.faults_pending() == 0


async def test_retries_are_bounded(executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator) -> None:
    daytona_emulator.fail_next("POST /api/sandbox", 99, 503)
    with pytest.raises(ExecutionError, match="create sandbox failed"):
        await executor.start(ExecSpec(argv=["true"]))
    assert daytona_emulator.faults_pending() == 99 - executor.attempts


async def test_start_command_is_not_repeated_on_a_server_error(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    daytona_emulator.fail_next("POST /toolbox/*/process/session/*/exec", 1, 500)
    with pytest.raises(ExecutionError, match="start command failed"):
        await executor.start(ExecSpec(argv=["true"]))
    assert daytona_emulator.sandboxes == {}


async def test_slow_creation_is_waited_for(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    daytona_emulator.slow_creation(1.2)
    _, code = await collect(await executor.start(ExecSpec(argv=["true"])))
    assert code == 0


@pytest.mark.parametrize("how", ["creating", "error"])
async def test_a_sandbox_that_never_starts_fails_clearly_and_is_deleted(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator, how: str
) -> None:
    daytona_emulator.never_starting(how)
    ex = DaytonaExecutor(daytona_settings.with_changes({"daytona.create_timeout_s": 1.5}), "inst-1")
    try:
        with pytest.raises(
            ExecutionError, match="did not start within" if how == "creating" else "error state"
        ):
            await ex.start(ExecSpec(argv=["true"]))
    finally:
        await ex.close()
    assert daytona_emulator.sandboxes == {} and len(daytona_emulator.deleted) == 1


async def test_a_dropped_log_stream_is_resumed_without_loss_or_duplicates(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    daytona_emulator.drop_log_streams(count=1, after_bytes=1)
    script = "import time\nfor i in range(4):\n    print(i, flush=True); time.sleep(0.2)"
    chunks, code = await collect(await executor.start(ExecSpec(argv=[PY, "-c", script])))
    assert code == 0 and text(chunks, "stdout") == "0\n1\n2\n3\n"
    assert len([r for r in daytona_emulator.requests if r[1].endswith("/logs")]) == 2


async def test_repeatedly_dropped_log_stream_falls_back_to_the_snapshot(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    daytona_emulator.drop_log_streams(count=10, after_bytes=1)
    script = (
        "import sys,time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.1)\n"
        "print('e', file=sys.stderr)"
    )
    chunks, code = await collect(await executor.start(ExecSpec(argv=[PY, "-c", script])))
    assert code == 0 and text(chunks, "stdout") == "0\n1\n2\n" and text(chunks, "stderr") == "e\n"
    assert (
        len([r for r in daytona_emulator.requests if r[1].endswith("/logs")])
        == daytona_api.STREAM_ATTEMPTS + 1
    )


async def test_warm_pool_start_is_faster_than_cold(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    daytona_emulator.slow_creation(1.2)
    cold_ex = DaytonaExecutor(daytona_settings, "inst-cold")
    # In-process core (worker=False): the test looks at the pool inside it.
    warm_ex = DaytonaExecutor(daytona_settings.with_changes({"daytona.warm_pool": 1}), "inst-warm", worker=False)
    try:
        began = time.monotonic()
        cold = await cold_ex.start(ExecSpec(argv=["true"]))
        cold_s = time.monotonic() - began
        await warm_ex.warm()
        pooled_id = next(iter(warm_ex.core._pool.values()))[0].id
        began = time.monotonic()
        warm = await warm_ex.start(ExecSpec(argv=["true"], labels={"job": "w"}))
        warm_s = time.monotonic() - began
        assert warm.info == {"sandbox_id": pooled_id, "pool": "hit"} and cold.info["pool"] == "miss"
        assert warm_s < cold_s
        assert daytona_emulator.sandboxes[pooled_id].labels["job"] == "w"
        assert "agent-manager-pool" not in daytona_emulator.sandboxes[pooled_id].labels
        assert (await warm.wait(), await cold.wait()) == (0, 0)
        async def refilled() -> None:  # on the Daytona loop, where the refill tasks live
            await asyncio.gather(*warm_ex.core._refills.values())
        await warm_ex.bridge.run(refilled())  # the pool refilled; close() must delete it too
        assert any("agent-manager-pool" in sb.labels for sb in daytona_emulator.sandboxes.values())
    finally:
        await cold_ex.close()
        await warm_ex.close()
    assert daytona_emulator.sandboxes == {}


async def test_a_stopped_pool_sandbox_is_started_before_reuse(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings.with_changes({"daytona.warm_pool": 1}), "inst-1", worker=False)
    try:
        await ex.warm()
        pooled = next(iter(ex.core._pool.values()))[0]
        daytona_emulator.sandboxes[pooled.id].state = "stopped"  # auto-stopped while idle
        execution = await ex.start(ExecSpec(argv=["true"]))
        assert execution.info["sandbox_id"] == pooled.id and await execution.wait() == 0
        assert ("POST", f"/api/sandbox/{pooled.id}/start", None) in daytona_emulator.requests
    finally:
        await ex.close()


async def test_list_and_sweep_touch_only_labelled_leftovers(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    from daytona import AsyncDaytona, CreateSandboxFromSnapshotParams, DaytonaConfig

    daytona_emulator.page_size = 2  # force several pages
    config = DaytonaConfig(api_key=daytona_emulator.api_key, api_url=daytona_emulator.api_url, target="us")
    async with AsyncDaytona(config) as client:
        ids = {}
        for name, labels in [
            ("a", {"agent-manager": "old"}),
            ("b", {"agent-manager": "other"}),
            ("keep", {"agent-manager": "old"}),
            ("foreign", {"team": "x"}),
            ("c", {}),
        ]:
            ids[name] = (await client.create(CreateSandboxFromSnapshotParams(labels=labels), timeout=10)).id
        config = daytona_section(daytona_settings)
        listed = await list_sandboxes(config)
        assert {item["id"] for item in listed} == {ids["a"], ids["b"], ids["keep"]}
        assert await sweep(config, keep={ids["keep"]}, instance="old") == 1
        assert await sweep(config, keep={ids["keep"]}) == 1
        assert set(daytona_emulator.sandboxes) == {ids["keep"], ids["foreign"], ids["c"]}
        for sandbox_id in list(daytona_emulator.sandboxes):
            await (await client.get(sandbox_id)).delete(timeout=10)


@contextlib.contextmanager
def _bare_404() -> Iterator[str]:
    """A web server that answers every request 404 with an empty body."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/not-api"
    finally:
        server.shutdown()
        server.server_close()


async def test_available_reasons(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = DaytonaExecutor(daytona_settings, "i")
    assert (await ok.available()).ok
    await ok.close()
    no_key = DaytonaExecutor(daytona_settings.with_changes({"daytona.api_key": None}), "i")
    assert (await no_key.available()).reason == "Daytona is not configured: set daytona.api_key (or DAYTONA_API_KEY)"
    with pytest.raises(ExecutorUnavailable):
        await no_key.start(ExecSpec(argv=["true"]))
    bad_key = DaytonaExecutor(
        daytona_settings.with_changes({"daytona.api_key": SecretStr("wrong")}), "i"
    )
    assert "rejected the API key" in (await bad_key.available()).reason
    await bad_key.close()
    down = DaytonaExecutor(
        daytona_settings.with_changes({"daytona.api_url": "http://127.0.0.1:9/api"}), "i"
    )
    assert (await down.available()).reason.startswith("Daytona API unreachable: ")
    await down.close()
    # Something answers at the URL, but not Daytona: a bare 404 (empty body, found by a newcomer)
    # must not read "Failed to list sandboxes: " with nothing after it.
    with _bare_404() as url:
        wrong = DaytonaExecutor(daytona_settings.with_changes({"daytona.api_url": url}), "i")
        reason = (await wrong.available()).reason
        await wrong.close()
    assert reason == (f"Daytona API unreachable: Failed to list sandboxes (HTTP 404): is daytona.api_url right? "
                      f"{url} does not answer as the Daytona API (its URL usually ends in /api)")
    monkeypatch.setitem(sys.modules, "daytona", None)  # the optional extra is not installed
    missing = await DaytonaExecutor(daytona_settings, "i", worker=False).available()  # this process's modules
    assert missing.reason == "the daytona extra is not installed: pip install 'agent-manager[daytona]'"
    assert daytona_api.INSTALL_HINT == missing.reason


async def test_the_start_up_sweep_spares_a_sandbox_whose_label_was_issued_while_it_listed(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up sweep deletes this instance's leftovers while runs and terminals may already
    be creating sandboxes: a label issued after the sweep began, but before its list arrived,
    marks a sandbox of this service, not a leftover (it used to be read when the sweep began)."""
    from types import SimpleNamespace

    from daytona import AsyncDaytona, CreateSandboxFromSnapshotParams, DaytonaConfig

    from agent_manager.executors import daytona_core
    from agent_manager.executors.daytona_core import DaytonaCore

    config = DaytonaConfig(api_key=daytona_emulator.api_key, api_url=daytona_emulator.api_url, target="us")
    async with AsyncDaytona(config) as client:
        ours = await client.create(CreateSandboxFromSnapshotParams(
            labels={"agent-manager": "inst-sweep", "agent-manager-run": "late"}), timeout=10)
        leftover = await client.create(CreateSandboxFromSnapshotParams(
            labels={"agent-manager": "inst-sweep", "agent-manager-run": "old"}), timeout=10)
    core = DaytonaCore(daytona_settings, "inst-sweep")
    daytona_emulator.configure(call_latency_s=0.5)
    try:
        preparing = asyncio.create_task(core.prepare())
        await asyncio.sleep(0.2)  # the sweep has begun and waits for its list
        monkeypatch.setattr(daytona_core.uuid, "uuid4", lambda: SimpleNamespace(hex="late"))
        assert core.issue_label() == "late"
        await preparing
    finally:
        daytona_emulator.configure(call_latency_s=0.0)
        await core.close()
    assert ours.id in daytona_emulator.sandboxes
    assert leftover.id not in daytona_emulator.sandboxes
    await daytona_emulator.remove(ours.id)
