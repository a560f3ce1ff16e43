"""One contract, every backend: what the run layer relies on from any Executor.

To add a backend, write a factory ``(settings, tag_prefix) -> Executor`` and add it to
``BACKENDS`` — that is the only place. Every backend must be available here (the test command
installs bubblewrap; Daytona runs against the emulator), so an unavailable one fails. The programs are small
``python3 -c`` / ``sh -c`` scripts resolved on the backend's own PATH.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import ExecSpec, Executor
from agent_manager.executors.local import LocalExecutor
from agent_manager.settings import Settings

Factory = Callable[[Settings, str], Executor]


def _local(settings: Settings, prefix: str) -> Executor:
    return LocalExecutor(settings, prefix)


def _sandbox(settings: Settings, prefix: str) -> Executor:
    from agent_manager.executors.sandbox import SandboxExecutor
    return SandboxExecutor(settings, prefix)


def _daytona(settings: Settings, prefix: str) -> Executor:
    from agent_manager.executors.daytona import DaytonaExecutor
    return DaytonaExecutor(settings, prefix, retry_base_s=0.05)


BACKENDS: dict[str, Factory] = {"local": _local, "sandbox": _sandbox, "daytona": _daytona}


@pytest.fixture(params=list(BACKENDS))
async def executor(request: pytest.FixtureRequest, tmp_path: Path,
                   daytona_settings: Settings) -> AsyncIterator[Executor]:
    settings = Settings(home=tmp_path / "home", kill_grace_s=0.3, stream_close_grace_s=1.0)
    if request.param == "daytona":  # the real SDK against the emulator in tests/fakes
        settings = daytona_settings
    backend = BACKENDS[request.param](settings, f"contract-{uuid.uuid4().hex[:8]}")
    availability = await backend.available()
    assert availability.ok, f"{request.param} backend unavailable here: {availability.reason}"
    yield backend
    await backend.close()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


def spec(workspace: Path, *argv: str, **kw: object) -> ExecSpec:
    kw.setdefault("network", False)
    return ExecSpec(argv=list(argv), workspace=workspace, timeout_s=30, **kw)  # type: ignore[arg-type]


async def collect(execution: object, timeout: float = 15) -> tuple[int, str, str]:
    out: dict[str, str] = {"stdout": "", "stderr": ""}

    async def read() -> int:
        async for chunk in execution.output():  # type: ignore[attr-defined]
            out[chunk.stream] += chunk.text
        return await execution.wait()  # type: ignore[attr-defined]

    code = await asyncio.wait_for(read(), timeout)
    return code, out["stdout"], out["stderr"]


def marker_pids(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (sandboxed ones included)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
    return found


async def gone(marker: str, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if not marker_pids(marker):
            return True
        await asyncio.sleep(0.05)
    return not marker_pids(marker)


def sleep_marker() -> str:
    """A unique ``sleep`` duration, so leftovers can be found by their argv."""
    return str(random.randint(7_000_000, 7_999_999))


async def test_output_streams_before_exit(executor: Executor, workspace: Path) -> None:
    execution = await executor.start(spec(workspace, "python3", "-c",
                                          "import time; print('first', flush=True); time.sleep(30)"))
    try:
        chunk = await asyncio.wait_for(execution.output().__anext__(), 10)
        assert chunk.stream == "stdout" and "first" in chunk.text
        waiter = asyncio.ensure_future(execution.wait())
        await asyncio.sleep(0.1)
        assert not waiter.done(), "the process was still meant to be running"
    finally:
        await execution.cancel()
    await asyncio.wait_for(waiter, 10)


async def test_stdout_and_stderr_are_separate(executor: Executor, workspace: Path) -> None:
    execution = await executor.start(spec(workspace, "sh", "-c", "echo to-out; echo to-err >&2"))
    code, out, err = await collect(execution)
    assert code == 0
    assert out == "to-out\n" and err == "to-err\n"


@pytest.mark.parametrize("status", [0, 7])
async def test_exit_code(executor: Executor, workspace: Path, status: int) -> None:
    execution = await executor.start(spec(workspace, "sh", "-c", f"exit {status}"))
    code, _, _ = await collect(execution)
    assert code == status


async def test_stdin_is_delivered(executor: Executor, workspace: Path) -> None:
    execution = await executor.start(spec(workspace, "python3", "-c",
                                          "import sys; print(sys.stdin.read().upper())",
                                          stdin=b"hello from stdin"))
    code, out, _ = await collect(execution)
    assert code == 0 and out.strip() == "HELLO FROM STDIN"


async def test_files_are_written_and_workspace_is_cwd(executor: Executor, workspace: Path) -> None:
    execution = await executor.start(spec(workspace, "sh", "-c", "cat input.txt; echo done > output.txt",
                                          files={"input.txt": b"given"}, outputs=["output.txt"]))
    code, out, _ = await collect(execution)
    assert code == 0 and out == "given"
    assert (workspace / "output.txt").read_text() == "done\n"


async def test_cancel_ends_the_whole_tree_with_escalation(executor: Executor, workspace: Path) -> None:
    marker = sleep_marker()
    # Every process ignores SIGINT and SIGTERM (inherited), one has left the session.
    script = (f"trap '' INT TERM; setsid sleep {marker} & sleep {marker} & "
              f"python3 -c 'import time; time.sleep({marker})' & echo started; wait")
    execution = await executor.start(spec(workspace, "sh", "-c", script))
    chunk = await asyncio.wait_for(execution.output().__anext__(), 10)
    assert "started" in chunk.text
    for _ in range(100):
        if len(marker_pids(marker)) >= 3:
            break
        await asyncio.sleep(0.05)
    assert len(marker_pids(marker)) >= 3
    await asyncio.wait_for(execution.cancel(), 10)
    assert await gone(marker, 3), f"left running: {marker_pids(marker)}"
    await asyncio.wait_for(execution.wait(), 5)
    await execution.cancel()  # a second cancel is harmless


async def test_missing_executable_names_it(executor: Executor, workspace: Path) -> None:
    """Raised by ``start`` where the backend can tell at once, else by ``wait`` (remote shells)."""
    with pytest.raises(ExecutionError, match="no-such-agent-cli-9f3"):
        await collect(await executor.start(spec(workspace, "no-such-agent-cli-9f3", "--help")))


async def test_prompt_with_shell_metacharacters_is_one_argument(executor: Executor, workspace: Path) -> None:
    prompt = "a \"b\" 'c' $(touch pwned) `id`; rm -rf / | cat > x & * ?\n--yolo \\ end"
    execution = await executor.start(spec(workspace, "python3", "-c",
                                          "import json, sys; print(json.dumps(sys.argv[1:]))", prompt))
    code, out, _ = await collect(execution)
    assert code == 0
    assert json.loads(out) == [prompt]
    assert not (workspace / "pwned").exists() and not (workspace / "x").exists()
