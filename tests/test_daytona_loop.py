"""The Daytona backend's own thread and loop (executors.daytona_loop), and its cached availability.

The real SDK against the emulator of tests/fakes: every SDK request must leave from the
executor's thread, output must reach the service's loop complete, in order and bounded, and
cancel / close must still end commands, delete sandboxes and join the thread.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from fakes.daytona_emulator import DaytonaEmulator

from agent_manager.executors.base import ExecSpec
from agent_manager.executors.daytona import DaytonaExecutor, DaytonaRun
from agent_manager.executors.daytona_link import RemoteRun
from agent_manager.executors.daytona_loop import DaytonaLoop, Handoff
from agent_manager.settings import Settings

PY = sys.executable


@pytest.fixture
async def executor(daytona_settings: Settings) -> AsyncIterator[DaytonaExecutor]:
    ex = DaytonaExecutor(daytona_settings, "inst-loop", retry_base_s=0.01, worker=False)
    yield ex
    await ex.close()


async def until(check: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_every_sdk_request_leaves_from_the_daytona_thread(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = aiohttp.ClientSession._request

    async def recorded(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return await real(self, *args, **kwargs)
    monkeypatch.setattr(aiohttp.ClientSession, "_request", recorded)
    assert (await executor.available()).ok
    run = await executor.start(ExecSpec(argv=[PY, "-c", "print('hello', flush=True)"]))
    assert "".join([c.text async for c in run.output()]) == "hello\n" and await run.wait() == 0
    assert len(threads) >= 5  # list, create, polls, session, command, logs, delete...
    assert executor.bridge.thread is not None and executor.bridge.thread is not threading.main_thread()
    assert set(threads) == {executor.bridge.thread}


async def test_output_is_complete_in_order_with_a_slow_reader(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    script = "import sys\nfor i in range(3000):\n    print(f'line {i}', flush=True)\n"
    run = await executor.start(ExecSpec(argv=[PY, "-c", script]))
    received = []
    async for chunk in run.output():
        received.append(chunk.text)
        await asyncio.sleep(0.001)  # slower than the stream: the Daytona side must wait, not pile up
    assert await run.wait() == 0
    assert "".join(received) == "".join(f"line {i}\n" for i in range(3000))


async def test_handoff_keeps_order_and_bounds_what_waits() -> None:
    bridge = DaytonaLoop("test-loop")
    handoff: Handoff[int] = Handoff(bridge, 8)
    put: list[int] = []

    async def produce() -> None:
        for i in range(500):
            await handoff.put(i)
            put.append(i)
        handoff.end()
    producing = asyncio.create_task(bridge.run(produce()))
    await until(lambda: handoff._blocked)  # nobody reads: the producer stops at the limit
    assert len(put) == 7 and not producing.done()
    got: list[int] = []
    async for batch in handoff.batches():
        assert len(batch) <= 8
        got += batch
    await producing
    assert got == list(range(500))
    await bridge.close()
    assert bridge.thread is not None and not bridge.thread.is_alive()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_the_daytona_thread_runs_at_a_lower_priority_than_the_service() -> None:
    import os

    from agent_manager.executors.daytona_loop import THREAD_NICE

    bridge = DaytonaLoop("test-loop")

    async def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert await bridge.run(nice()) == min(own + THREAD_NICE, 19)  # only the Daytona thread
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    await bridge.close()


async def test_an_abandoned_reader_never_blocks_the_writer() -> None:
    bridge = DaytonaLoop("test-loop")
    handoff: Handoff[int] = Handoff(bridge, 4)

    async def produce() -> int:
        for i in range(100):
            await handoff.put(i)
        handoff.end()
        return i
    producing = asyncio.create_task(bridge.run(produce()))
    reader = handoff.batches()
    assert await anext(reader)
    await reader.aclose()  # the run layer stopped reading
    assert await asyncio.wait_for(producing, 10) == 99
    await bridge.close()


async def test_a_result_nobody_waits_for_goes_to_orphan_exactly_once() -> None:
    """The caller is cancelled at every moment around the Daytona side finishing: each value
    is either returned or handed to ``orphan``, never lost and never both."""
    bridge = DaytonaLoop("test-loop")
    orphaned: list[int] = []
    returned: list[int] = []
    finished: list[int] = []

    async def orphan(value: int) -> None:
        orphaned.append(value)

    async def value(i: int) -> int:
        for _ in range(i % 3):
            await asyncio.sleep(0)
        finished.append(i)  # no await from here on: this value exists
        return i

    async def call(i: int) -> None:
        returned.append(await bridge.run(value(i), orphan))
    for i in range(300):
        task = asyncio.create_task(call(i))
        for _ in range(i % 5):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await bridge.run(asyncio.sleep(0.05))
    assert sorted(returned + orphaned) == sorted(finished)  # each finished value exactly once
    # Which outcomes the sweep hits depends on the machine's load; each one, forced:
    assert await bridge.run(value(1000), orphan) == 1000  # waited for: returned
    late = asyncio.create_task(bridge.run(value(1001), orphan))
    await asyncio.sleep(0)  # the call is on its way to the Daytona loop
    deadline = time.monotonic() + 10
    while 1001 not in finished and time.monotonic() < deadline:
        time.sleep(0.001)  # block this loop: the result cannot reach the caller before the cancel
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    never = asyncio.create_task(bridge.run(asyncio.Event().wait(), orphan))
    await asyncio.sleep(0.01)
    never.cancel()
    await asyncio.gather(never, return_exceptions=True)
    await bridge.run(asyncio.sleep(0.05))
    assert 1001 in orphaned and 1001 not in returned  # finished, caller gone: orphaned, once
    assert orphaned.count(1001) == 1 and len(orphaned) == len(set(orphaned))
    await bridge.close()


async def test_cancelling_a_start_deletes_its_sandbox(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    daytona_emulator.slow_creation(30)
    start = asyncio.create_task(executor.start(ExecSpec(argv=["true"])))
    await until(lambda: daytona_emulator.sandboxes)  # created, waiting for `started`
    start.cancel()
    await asyncio.gather(start, return_exceptions=True)
    await until(lambda: not daytona_emulator.sandboxes)  # the Daytona side cleaned up


async def test_close_ends_running_commands_deletes_sandboxes_and_joins_the_thread(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings.with_changes({"daytona.warm_pool": 1}), "inst-close", retry_base_s=0.01,
                         worker=False)
    run = await ex.start(ExecSpec(argv=[PY, "-c", "print('up', flush=True); import time; time.sleep(60)"]))
    stream = run.output()
    assert (await asyncio.wait_for(anext(stream), 10)).text == "up\n"
    thread = ex.bridge.thread
    assert thread is not None and thread.is_alive() and daytona_emulator.running_pids()
    await asyncio.wait_for(ex.close(), 60)
    assert not thread.is_alive()
    assert await asyncio.wait_for(run.wait(), 5) == -9
    assert not daytona_emulator.sandboxes and not daytona_emulator.running_pids()
    await until(lambda: not ex.running)
    await run.cancel()  # after close: nothing left to do, and no error


def _lists(emulator: DaytonaEmulator) -> int:
    return sum(1 for method, path, _ in emulator.requests if method == "GET" and path == "/api/sandbox")


async def test_availability_is_cached_and_forgotten_when_settings_change(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    daytona_emulator.fail_next("GET /api/sandbox", 1, 503)
    first = await executor.available()
    assert not first.ok and "Daytona API unreachable" in first.reason
    assert await asyncio.gather(executor.available(), executor.available()) == [first, first]
    assert _lists(daytona_emulator) == 1  # a failure is kept too (UNAVAILABLE_TTL_S)
    await executor.settings_changed({"auto_stop_minutes"})
    assert (await executor.available()).ok and _lists(daytona_emulator) == 2
    assert (await executor.available()).ok and _lists(daytona_emulator) == 2  # kept (AVAILABLE_TTL_S)


async def test_an_unconfigured_executor_answers_without_a_thread(daytona_settings: Settings) -> None:
    ex = DaytonaExecutor(daytona_settings.with_changes({"daytona.api_key": None}), "inst-none", worker=False)
    assert not (await ex.available()).ok
    assert await ex.list_sandboxes() == []
    await ex.prepare()
    assert ex.bridge.thread is None
    await ex.close()



async def test_a_finished_run_has_left_running_when_wait_returns(
    executor: DaytonaExecutor, daytona_emulator: DaytonaEmulator
) -> None:
    """The service retires an old executor once ``running`` is empty, and the 300-run test
    checks it right after the last run: no window where a run is over but still listed."""
    runs = [await executor.start(ExecSpec(argv=["true"])) for _ in range(3)]
    for run in runs:
        assert await run.wait() == 0
        assert run not in executor.running  # no extra turn of either loop needed
    assert not executor.running


async def test_wait_returns_after_the_exit_callback_when_the_exit_was_known_first() -> None:
    """The exit can be known before anyone waits, with its callbacks still queued: awaiting a
    done future takes no turn of the loop, so ``wait`` returned before ``exited``'s callback
    had run (the service retires an executor once ``running`` is empty). Both kinds of run."""
    local = DaytonaRun(SimpleNamespace())  # type: ignore[arg-type]
    remote = RemoteRun(SimpleNamespace(generation=0), 1)  # type: ignore[arg-type]
    for run in (local, remote):
        seen: list[Any] = []
        run.exited(seen.append)  # type: ignore[attr-defined]
        if run is local:
            local.exit_code.set_result(0)
            await asyncio.sleep(0)  # the loop copies it into its own future; that one's callbacks queue
        else:
            remote.exit_code.set_result(0)  # its callbacks queue
        assert await run.wait() == 0  # type: ignore[attr-defined]
        assert seen == [run]
        await asyncio.sleep(0.01)  # the queued callback runs as well, and does not call again
        assert seen == [run]


async def test_cancel_answers_promptly_when_the_daytona_api_stops_answering(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    """A black-holed network (every request hangs) used to hold a cancel, and so the user's
    POST /cancel and a run's timeout, for the SDK's 60 s delete timeout. Cancel now waits a
    bounded time; the delete goes on in the background (then the reaper) and, once the API
    answers again, the sandbox is gone."""
    ex = DaytonaExecutor(daytona_settings, "inst-blackhole", retry_base_s=0.01, worker=False)
    try:
        run = await ex.start(ExecSpec(argv=[PY, "-c", "print('up', flush=True); import time; time.sleep(120)"]))
        stream = run.output()
        assert (await asyncio.wait_for(anext(stream), 10)).text == "up\n"
        daytona_emulator.configure(call_latency_s=3600)  # requests arrive, nothing answers
        async with asyncio.timeout(30):  # liveness (the SDK's own delete timeout is 60 s)
            await run.cancel()
            assert await run.wait() == -9
        daytona_emulator.configure(call_latency_s=0)
        await until(lambda: not daytona_emulator.sandboxes, 90)  # the delete retried once it answers
        assert ex.bridge.thread is not None and ex.bridge.thread.is_alive()
        nxt = await ex.start(ExecSpec(argv=["true"]))  # the Daytona thread still serves new runs
        assert await asyncio.wait_for(nxt.wait(), 30) == 0
    finally:
        await asyncio.wait_for(ex.close(), 90)
