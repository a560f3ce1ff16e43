"""The Daytona worker process (executors.daytona_worker / daytona_link): the SDK out of the service.

The real SDK in a real child process against the emulator of tests/fakes: a crash of the worker
fails the runs in flight with a clear error and the next run gets a new worker (which deletes
what the old one left); closing the executor, or the death of the service, leaves no sandbox
and no process; cancel ends a run; secrets travel through the pipe, never in the worker's argv
or environment; a settings change reaches the worker.
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import running_service
from fakes.daytona_emulator import DaytonaEmulator, self_signed

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.daytona import DaytonaExecutor
from agent_manager.executors.daytona_heap import Trimmer, malloc_trim
from agent_manager.executors.daytona_wire import (
    MAX_FRAME,
    SPLIT_AT,
    WireError,
    decode,
    encode,
    encode_all,
    frame_length,
    spec_in,
    spec_out,
)
from agent_manager.executors.daytona_worker import WORKER_NICE, PipeOutlet
from agent_manager.settings import Settings

SLEEP = ["sh", "-c", "echo started; sleep 60"]


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def until(check: object, within: float = 20.0) -> bool:
    for _ in range(int(within / 0.1)):
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return bool(check())  # type: ignore[operator]


async def first_output(execution: object) -> str:
    stream = execution.output()  # type: ignore[attr-defined]
    return (await asyncio.wait_for(stream.__anext__(), 20)).text  # type: ignore[no-any-return]


async def test_a_crashed_worker_fails_its_runs_clearly_and_the_next_run_gets_a_new_one(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings, "inst-crash", retry_base_s=0.01)
    try:
        running = await ex.start(ExecSpec(argv=SLEEP))
        assert await first_output(running) == "started\n"
        pid = ex.worker_pid
        assert pid is not None and alive(pid)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ExecutionError, match=r"Daytona worker process ended unexpectedly \(killed by signal 9\)"):
            await asyncio.wait_for(running.wait(), 20)
        assert not ex.running and ex.live == 0
        await running.cancel()  # a run of the dead worker: nothing to do, no new worker for it
        assert ex.worker_pid is None
        # The next run starts a new worker, which first deletes what the dead one left.
        again = await ex.start(ExecSpec(argv=["sh", "-c", "echo again"]))
        assert ex.worker_pid not in (None, pid)
        assert [c.text async for c in again.output()] == ["again\n"] and await again.wait() == 0
        assert await until(lambda: not daytona_emulator.sandboxes and not daytona_emulator.running_pids())
    finally:
        await ex.close()


async def test_close_ends_runs_deletes_sandboxes_and_the_worker_exits(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    async with running_service(daytona_settings) as svc:
        executor = svc.executors["daytona"]
        assert isinstance(executor, DaytonaExecutor)
        runs = [await executor.start(ExecSpec(argv=SLEEP)) for _ in range(3)]
        for run in runs:
            assert await first_output(run) == "started\n"
        pid = executor.worker_pid
        assert pid is not None and len(daytona_emulator.sandboxes) == 3
    # The service stopped: every run over (-9), every sandbox deleted, the worker gone.
    assert [await run.wait() for run in runs] == [-signal.SIGKILL] * 3
    assert not daytona_emulator.sandboxes and not daytona_emulator.running_pids()
    assert not alive(pid)


HOLDER = textwrap.dedent("""
    import asyncio, sys
    from agent_manager.executors.base import ExecSpec
    from agent_manager.executors.daytona import DaytonaExecutor
    from agent_manager.settings import Settings

    async def main():
        settings = Settings(home=sys.argv[3], kill_grace_s=0.2,
                            daytona={"api_key": sys.argv[1], "api_url": sys.argv[2], "target": "us"})
        ex = DaytonaExecutor(settings, "inst-holder", retry_base_s=0.01)
        run = await ex.start(ExecSpec(argv=["sh", "-c", "echo started; sleep 60"]))
        print(ex.worker_pid, flush=True)
        await asyncio.sleep(120)
    asyncio.run(main())
""")


async def test_a_killed_service_leaves_no_worker_and_no_sandbox(
    daytona_emulator: DaytonaEmulator, tmp_path: Path
) -> None:
    """SIGKILL of the service (no close): the worker sees its pipe close, deletes the sandboxes
    of its runs and exits."""
    service = subprocess.Popen(
        [sys.executable, "-c", HOLDER, daytona_emulator.api_key, daytona_emulator.api_url, str(tmp_path / "home")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert service.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(service.stdout.readline), 60)
        worker = int(line)
        assert alive(worker) and len(daytona_emulator.sandboxes) == 1
        service.kill()
        await asyncio.to_thread(service.wait)
        assert await until(lambda: not alive(worker), 30), "the worker outlived the service"
        assert not daytona_emulator.sandboxes and not daytona_emulator.running_pids()
    finally:
        service.kill()
        service.wait()


async def test_cancel_and_a_start_cancelled_mid_create_leave_nothing(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings, "inst-cancel", retry_base_s=0.01)
    try:
        run = await ex.start(ExecSpec(argv=SLEEP))
        assert await first_output(run) == "started\n"
        await run.cancel()
        assert await asyncio.wait_for(run.wait(), 20) == -signal.SIGKILL
        await run.cancel()  # twice is fine
        assert not daytona_emulator.sandboxes and not daytona_emulator.running_pids()
        daytona_emulator.slow_creation(1.5)
        starting = asyncio.create_task(ex.start(ExecSpec(argv=SLEEP)))
        assert await until(lambda: daytona_emulator.sandboxes, 10)  # being created
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert await until(lambda: not daytona_emulator.sandboxes and not daytona_emulator.running_pids())
        assert await until(lambda: not ex.running)
    finally:
        await ex.close()


async def test_secrets_reach_the_worker_only_through_its_pipe(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_MANAGER_OTHER_SECRET", "service-own-secret-4711")
    ex = DaytonaExecutor(daytona_settings, "inst-secret", retry_base_s=0.01)
    try:
        run = await ex.start(ExecSpec(argv=["sh", "-c", 'echo "token=$TOKEN"'], env={"TOKEN": "run-secret-0815"}))
        assert [c.text async for c in run.output()] == ["token=run-secret-0815\n"]  # it did reach the run
        assert await run.wait() == 0
        pid = ex.worker_pid
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert cmdline.split(b"\0")[1:4] == [b"-P", b"-m", b"agent_manager.executors.daytona_worker"]
        for secret in (daytona_emulator.api_key, "run-secret-0815", "service-own-secret-4711"):
            assert secret.encode() not in cmdline and secret.encode() not in environ
        assert b"AGENT_MANAGER_" not in environ and b"DAYTONA_" not in environ
        # It runs at a lower priority than the service (WORKER_NICE), so API requests go first.
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice == min(os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE, 19)
    finally:
        await ex.close()


async def test_a_settings_change_reaches_the_worker(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings, "inst-settings", retry_base_s=0.01)
    try:
        assert (await ex.available()).ok
        assert (await ex.stats())["pooled"] == 0
        ex.section.warm_pool = 1
        await ex.settings_changed({"warm_pool"})
        assert await until(lambda: len(daytona_emulator.sandboxes) == 1)

        async def pooled() -> int:
            return (await ex.stats())["pooled"]
        for _ in range(100):
            if await pooled() == 1:
                break
            await asyncio.sleep(0.1)
        assert await pooled() == 1
    finally:
        await ex.close()
    assert not daytona_emulator.sandboxes


async def test_the_worker_hands_free_heap_pages_back_after_runs(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings, "inst-trim", retry_base_s=0.01)
    try:
        run = await ex.start(ExecSpec(argv=["sh", "-c", "echo hi"]))
        assert [c.text async for c in run.output()] == ["hi\n"]
        assert await run.wait() == 0
        for _ in range(200):  # a trim follows a run's calls and its end (TRIM_EVERY_S later)
            if (await ex.stats())["heap_trims"] >= 1:
                break
            await asyncio.sleep(0.1)
        assert (await ex.stats())["heap_trims"] >= 1
    finally:
        await ex.close()


async def test_the_heap_trimmer_trims_once_after_a_burst_of_pokes() -> None:
    calls: list[int] = []
    trimmer = Trimmer(lambda pad: calls.append(pad) or 1, every=0.05)
    for _ in range(5):
        trimmer.poke()
    assert await until(lambda: calls)
    await asyncio.sleep(0.2)
    assert calls == [0] and trimmer.trims == 1  # five pokes, one trim
    trimmer.poke()
    trimmer.close()  # a pending trim is dropped
    await asyncio.sleep(0.2)
    assert calls == [0]
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        trim = malloc_trim()
        assert trim is not None and trim(0) in (0, 1)


QUIET_SPANS_CHECK = """
import asyncio, sys
from opentelemetry import context, trace
from daytona._utils.otel_decorator import with_instrumentation
if sys.argv[1] == "quiet":
    from agent_manager.executors.daytona_heap import quiet_sdk_spans
    quiet_sdk_spans()

class Sandbox:
    @with_instrumentation()
    async def call(self, fail):
        await asyncio.sleep(0)
        if fail:
            raise KeyError("gone")
        return context.get_current(), trace.get_current_span()

async def main():
    outside = context.get_current()
    inside, span = await Sandbox().call(False)
    try:
        await Sandbox().call(True)
    except KeyError as exc:
        assert exc.args == ("gone",)
    else:
        raise AssertionError("the error was swallowed")
    print(inside is outside, span is trace.INVALID_SPAN)
asyncio.run(main())
"""


def test_the_sdk_spans_in_the_worker_attach_nothing_and_change_no_result() -> None:
    """``quiet_sdk_spans`` (called by the worker at start): the SDK's instrumented calls return
    and raise as before, and no longer build a context per call (the API's no-op tracer does)."""
    def check(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", QUIET_SPANS_CHECK, mode], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()
    assert check("quiet") == "True True"
    assert check("default") == "False True"  # what the check tells apart: a context attached per call


SMALL_TLS_CHECK = """
import asyncio, hashlib, ssl, sys
from asyncio import sslproto
from agent_manager.executors.daytona_heap import TLS_READ_SIZE, small_tls_buffers
small_tls_buffers()
assert sslproto.SSLProtocol.max_size == TLS_READ_SIZE == 16 * 1024
cert, key = sys.argv[1:3]
payload = bytes(range(256)) * 4096  # 1 MiB: 64 times the buffer

async def main():
    async def serve(reader, writer):
        data = await reader.readexactly(len(payload))
        writer.write(hashlib.sha256(data).hexdigest().encode() + data[::-1])
        await writer.drain()
        writer.close()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    client_side = ssl.create_default_context(cafile=cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_side, server_hostname="127.0.0.1")
    writer.write(payload)
    await writer.drain()
    answer = await reader.readexactly(64 + len(payload))
    assert answer[:64].decode() == hashlib.sha256(payload).hexdigest() and answer[64:] == payload[::-1]
    writer.close()
    server.close()
    print("ok")
asyncio.run(main())
"""


def test_the_workers_tls_connections_read_a_record_at_a_time_and_lose_nothing(tmp_path: Path) -> None:
    """``small_tls_buffers`` (called by the worker at start): a 16 KiB receive buffer per TLS
    connection instead of asyncio's 256 KiB, and 1 MiB each way over TLS still arrives intact."""
    cert, key = self_signed(tmp_path)
    done = subprocess.run([sys.executable, "-c", SMALL_TLS_CHECK, str(cert), str(key)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


async def test_a_run_over_https_and_wss_as_daytona_serves_them(
    daytona_tls_settings: Settings, daytona_tls_emulator: DaytonaEmulator
) -> None:
    """The worker against the emulator over TLS (Daytona is HTTPS and WSS only), trusting its
    certificate through SSL_CERT_FILE: a run's 300 KB of output (many TLS records, each read
    into the worker's 16 KiB buffer) arrives whole and the sandbox is deleted."""
    assert daytona_tls_emulator.api_url.startswith("https://")
    ex = DaytonaExecutor(daytona_tls_settings, "inst-tls", retry_base_s=0.01)
    try:
        run = await ex.start(ExecSpec(argv=["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; echo; echo done"]))
        text = "".join([c.text async for c in run.output()])
        assert await run.wait() == 0
        assert text == "x" * 300000 + "\ndone\n"
    finally:
        await ex.close()
    assert not daytona_tls_emulator.sandboxes


def test_the_wire_refuses_what_it_cannot_trust() -> None:
    with pytest.raises(WireError):
        frame_length((MAX_FRAME + 1).to_bytes(4, "big"))
    for body in (b"not json", b'{"t": "x"}', b"[1, 2]", b'[{"no_type": 1}]'):
        with pytest.raises(WireError):
            decode(body)
    spec = ExecSpec(argv=["a", "b; rm -rf /"], env={"K": "v"}, stdin=b"\x00\xff", files={"f.txt": b"\x01"},
                    workspace=Path("/tmp/ws"), outputs=["out.txt"])
    assert spec_in(decode(encode([{"t": "s", "spec": spec_out(spec)}])[4:])[0]["spec"]) == spec
    with pytest.raises(WireError):
        spec_in({"argv": ["x"]})
    # Not valid Unicode (an undecodable file name in an error message): escaped, not a lost frame.
    assert decode(encode([{"t": "ret", "m": "bad \udcff name"}])[4:]) == [{"t": "ret", "m": "bad \udcff name"}]
    # A tick's messages past SPLIT_AT leave in several frames; one past MAX_FRAME is refused alone.
    big = [{"t": "o", "x": "y" * 300_000} for _ in range(8)]
    frames, refused = encode_all([*big, {"t": "call", "c": 1, "x": "z" * (MAX_FRAME + 1)}])
    assert len(refused) == 1 and refused[0]["c"] == 1
    bodies = []
    while frames:
        length = frame_length(frames[:4])
        assert length <= SPLIT_AT
        bodies += decode(frames[4:4 + length])
        frames = frames[4 + length:]
    assert bodies == big


async def test_a_run_too_large_for_the_pipe_fails_alone(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings, "inst-big", retry_base_s=0.01)
    try:
        with pytest.raises(ExecutionError, match="too large to pass to the Daytona worker"):
            await ex.start(ExecSpec(argv=["true"], stdin=b"x" * MAX_FRAME))
        assert not ex.link.streams and not ex.link.exits  # type: ignore[union-attr]
        run = await ex.start(ExecSpec(argv=["sh", "-c", "echo fine"]))
        assert [c.text async for c in run.output()] == ["fine\n"] and await run.wait() == 0
    finally:
        await ex.close()


async def test_output_through_the_worker_is_complete_in_order_with_a_slow_reader(
    daytona_settings: Settings, daytona_emulator: DaytonaEmulator
) -> None:
    ex = DaytonaExecutor(daytona_settings, "inst-slow", retry_base_s=0.01)
    try:
        script = "import sys\nfor i in range(3000):\n    print(f'line {i}', flush=True)\n"
        run = await ex.start(ExecSpec(argv=[sys.executable, "-c", script]))
        received = []
        async for chunk in run.output():
            received.append(chunk.text)
            await asyncio.sleep(0.001)  # slower than the stream: the worker must wait, not pile up
        assert await run.wait() == 0
        assert "".join(received) == "".join(f"line {i}\n" for i in range(3000))
    finally:
        await ex.close()


class _Quiet:
    """A worker link that sends nothing (the outlet's bookkeeping alone)."""

    def dirty(self, outlet: object) -> None:
        pass


async def test_the_worker_waits_when_the_service_is_a_window_behind() -> None:
    outlet = PipeOutlet(_Quiet(), 1, 8, binary=True, forget=lambda ident: None)  # type: ignore[arg-type]
    for _ in range(7):
        await outlet.put(b"x")
    eighth = asyncio.create_task(outlet.put(b"x"))
    await asyncio.sleep(0.05)
    assert not eighth.done()  # 8 unacknowledged: the SDK's callback waits
    outlet.ack(3)
    await asyncio.sleep(0.05)
    assert not eighth.done()  # 5 left: more than half the window
    outlet.ack(1)
    await asyncio.wait_for(eighth, 5)  # 4 left: it goes on
    assert [m["n"] for m in outlet.drain()] == [8]
    outlet.abandon()  # the reader went away: nothing waits, nothing is kept
    for _ in range(20):
        await asyncio.wait_for(outlet.put(b"y"), 5)
    assert outlet.drain() == []
