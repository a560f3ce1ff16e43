"""Hundreds of Daytona runs at once through the real service, against a slow, rate-limiting emulator.

Over HTTPS and WSS, as Daytona serves them (every run in flight holds a TLS log stream).
Not timed (bench/scale.py measures): it checks that every run succeeds with its own output,
that no sandbox or process is left behind, that creates never exceed
``daytona_max_concurrent_creates`` and that the emulator's 429s were absorbed, not failed on.
"""

from __future__ import annotations

import asyncio

from conftest import running_service
from fakes.daytona_emulator import DaytonaEmulator

from agent_manager.executors.base import ExecSpec
from agent_manager.executors.daytona import DaytonaExecutor
from agent_manager.run_request import RunRequest
from agent_manager.settings import Settings
from agent_manager.store import agents as agent_store
from agent_manager.store import runs as run_store

RUNS = 300
MAX_CREATES = 16


async def test_300_concurrent_daytona_runs_no_error_no_leak(
    daytona_tls_settings: Settings, daytona_tls_emulator: DaytonaEmulator
) -> None:
    daytona_settings, daytona_emulator = daytona_tls_settings, daytona_tls_emulator
    assert daytona_emulator.api_url.startswith("https://")
    daytona_emulator.configure(create_delay_s=0.3, call_latency_s=0.01, rate_429=0.05, keep_requests=False)
    settings = daytona_settings.model_copy(update={
        "daytona_max_concurrent_creates": MAX_CREATES, "daytona_create_timeout_s": 60, "max_concurrent_runs": 4})
    async with running_service(settings) as svc:
        executor = svc.executors["daytona"]
        assert isinstance(executor, DaytonaExecutor)
        await executor.tune(base_delay=0.05)  # the shared pause; production default 0.5 s
        assert executor.worker_pid is not None  # the SDK runs in the worker process
        agent = agent_store.create(svc.database, {
            "name": "cloud-echo", "kind": "generic", "command": "sh",
            "args": ["-c", 'echo "begin $1"; sleep 0.2; echo "end $1"', "sh", "{prompt}"], "backend": "daytona"})
        submitted = [svc.runs.submit(RunRequest(agent=agent, prompt=f"job-{i}", backend="daytona"))
                     for i in range(RUNS)]
        finals = await asyncio.wait_for(asyncio.gather(*(svc.runs.wait(r["id"]) for r in submitted)), 300)
        bad = [(r["id"], r["status"], r["error"]) for r in finals if r["status"] != "succeeded"]
        assert not bad, bad[:5]
        for i, run in enumerate(finals):
            assert run["backend"] == "daytona" and run["output"] == f"begin job-{i}\nend job-{i}\n", run
        texts = "".join(e["data"]["text"] for e in svc.runs.events.read(finals[-1]["id"], 0, 1000)
                        if e["type"] == "output")
        assert texts == f"begin job-{RUNS - 1}\nend job-{RUNS - 1}\n"
        assert run_store.search(svc.database, status="succeeded", limit=1)[1] == RUNS
        assert executor.live == 0 and not executor.running
        stats = await executor.stats()
        assert stats["live"] == 0
    assert daytona_emulator.rate_limited > 0 and stats["rate_limited"] > 0  # 429s met, and absorbed
    assert 0 < daytona_emulator.peak_creating <= MAX_CREATES
    assert daytona_emulator.peak_sandboxes > MAX_CREATES  # runs did overlap
    assert not daytona_emulator.sandboxes and not daytona_emulator.running_pids()


async def test_a_sandbox_whose_delete_failed_is_deleted_later(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    executor = DaytonaExecutor(daytona_settings, "inst-reap", retry_base_s=0.01, worker=False)  # sees its reaper
    try:
        daytona_emulator.fail_next("DELETE /api/sandbox/*", executor.attempts, 503)  # every retry of the run's delete
        execution = await executor.start(ExecSpec(argv=["true"]))
        assert [c async for c in execution.output()] == [] and await execution.wait() == 0
        assert len(daytona_emulator.sandboxes) == 1 and executor.reaper.sandboxes  # left over, but remembered
        for _ in range(100):
            if not daytona_emulator.sandboxes and not executor.reaper.sandboxes:
                break
            await asyncio.sleep(0.1)
        assert not daytona_emulator.sandboxes and not executor.reaper.sandboxes
    finally:
        await executor.close()


async def test_a_start_whose_answer_was_lost_adopts_the_command_it_started(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    """Under load a gateway can time out after the toolbox started the command. "start command"
    is not idempotent, so it is never repeated: the run's own session shows the command, which
    is adopted, and the agent runs exactly once."""
    daytona_emulator.lose_answer_next("POST /toolbox/*/process/session/*/exec", 1, 504)
    async with running_service(daytona_settings) as svc:
        agent = agent_store.create(svc.database, {
            "name": "cloud-once", "kind": "generic", "command": "sh",
            "args": ["-c", 'echo "begin $1"; echo "end $1"', "sh", "{prompt}"], "backend": "daytona"})
        run = svc.runs.submit(RunRequest(agent=agent, prompt="once", backend="daytona"))
        final = await asyncio.wait_for(svc.runs.wait(run["id"]), 120)
    assert daytona_emulator.faults_pending() == 0  # the lost answer did happen
    assert final["status"] == "succeeded" and final["output"] == "begin once\nend once\n", final
    starts = [r for r in daytona_emulator.requests if r[0] == "POST" and r[1].endswith("/exec")
              and "/process/session/" in r[1]]
    assert len(starts) == 1  # never started twice
    assert not daytona_emulator.sandboxes
