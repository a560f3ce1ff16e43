"""The sandbox's isolation properties, each tested by trying to break it from inside.

Everything runs real bwrap sandboxes; the module is skipped when bubblewrap cannot run here.
Leftover processes are found on the host by unique ``sleep`` arguments (the sandbox's pid
namespace is still visible in the host's /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_executors_contract import collect, gone, marker_pids, sleep_marker

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.sandbox import SandboxExecution, SandboxExecutor
from agent_manager.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"home": tmp_path / "home", "kill_grace_s": 0.3, "stream_close_grace_s": 1.0,
                                 "sandbox_tmp_mb": 16, "sandbox_memory_mb": 128, "sandbox_pids_max": 32}
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxExecutor]:
    executor = SandboxExecutor(make_settings(tmp_path), f"sbx-{uuid.uuid4().hex[:8]}")
    availability = await executor.available()
    if not availability.ok:
        pytest.skip(availability.reason)
    yield executor
    await executor.close()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


async def run_py(sandbox: SandboxExecutor, workspace: Path, code: str, **kw: object) -> tuple[int, str, str]:
    kw.setdefault("network", False)
    spec = ExecSpec(argv=["python3", "-c", textwrap.dedent(code)], workspace=workspace, **kw)  # type: ignore[arg-type]
    return await collect(await sandbox.start(spec), timeout=15)


TRY_WRITE = """
import errno, json, sys
result = {}
for path in sys.argv[1:]:
    try:
        open(path, "w").write("x")
        result[path] = "WRITABLE"
    except OSError as exc:
        result[path] = errno.errorcode[exc.errno]
print(json.dumps(result))
"""


async def try_write(sandbox: SandboxExecutor, workspace: Path, *paths: str) -> dict[str, str]:
    spec = ExecSpec(argv=["python3", "-c", TRY_WRITE, *paths], workspace=workspace, network=False)
    code, out, err = await collect(await sandbox.start(spec))
    assert code == 0, err
    return json.loads(out)


async def test_system_dirs_are_read_only(sandbox: SandboxExecutor, workspace: Path) -> None:
    result = await try_write(sandbox, workspace, "/usr/evil", "/usr/bin/python3", "/etc/evil", "/etc/passwd",
                             "/etc/ssl/certs/evil")
    assert all(v in ("EROFS", "EACCES") for v in result.values()), result
    assert not Path("/usr/evil").exists() and not Path("/etc/evil").exists()


async def test_root_is_remounted_read_only(sandbox: SandboxExecutor, workspace: Path) -> None:
    result = await try_write(sandbox, workspace, "/evil", "/dev/evil-not-a-device-dir/x")
    assert result["/evil"] == "EROFS", result
    assert result["/dev/evil-not-a-device-dir/x"] != "WRITABLE"


async def test_host_private_dirs_are_not_visible(sandbox: SandboxExecutor, workspace: Path) -> None:
    code, out, _ = await run_py(sandbox, workspace, """
        import os, json
        print(json.dumps({p: os.path.exists(p) for p in ["/root", "/home", "/work", "/etc/shadow",
                                                          "/etc/ssl/private", "/var", "/sys"]}))
    """)
    assert code == 0
    assert json.loads(out) == dict.fromkeys(["/root", "/home", "/work", "/etc/shadow", "/etc/ssl/private",
                                             "/var", "/sys"], False)


async def test_tmp_is_private_and_size_bounded(sandbox: SandboxExecutor, workspace: Path) -> None:
    canary = Path("/tmp") / f"host-canary-{uuid.uuid4().hex}"
    canary.write_text("host")
    try:
        code, out, _ = await run_py(sandbox, workspace, f"""
            import os, errno
            print("canary", os.path.exists({str(canary)!r}))
            try:
                with open("/tmp/big", "wb") as fh:
                    for _ in range(64):  # 64 MiB into a 16 MiB tmpfs
                        fh.write(b"x" * (1 << 20))
                print("wrote all")
            except OSError as exc:
                print("stopped", errno.errorcode[exc.errno])
        """)
    finally:
        canary.unlink()
    assert code == 0
    assert "canary False" in out and "stopped ENOSPC" in out, out
    assert not Path("/tmp/big").exists() or Path("/tmp/big").stat().st_size < (16 << 20)


async def test_only_workspace_is_writable(sandbox: SandboxExecutor, workspace: Path) -> None:
    result = await try_write(sandbox, workspace, "/workspace/result.txt", "/result.txt", "/proc/evil",
                             "/bin/evil", "/lib/evil")
    assert result.pop("/workspace/result.txt") == "WRITABLE"
    assert all(v != "WRITABLE" for v in result.values()), result
    assert (workspace / "result.txt").read_text() == "x"


def listening_socket() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


CONNECT = """
import errno, json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.settimeout(3)
try:
    s.connect((host, port)); r = "CONNECTED"
except OSError as exc:
    r = errno.errorcode.get(exc.errno, str(exc))
ifaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
print(json.dumps({"result": r, "ifaces": ifaces}))
"""


async def connect_from_inside(sandbox: SandboxExecutor, workspace: Path, host: str, port: int,
                              network: bool) -> dict[str, object]:
    spec = ExecSpec(argv=["python3", "-c", CONNECT, host, str(port)], workspace=workspace, network=network)
    code, out, err = await collect(await sandbox.start(spec))
    assert code == 0, err
    return json.loads(out)


async def test_no_network_by_default(sandbox: SandboxExecutor, workspace: Path) -> None:
    with listening_socket() as server:
        port = server.getsockname()[1]
        local = await connect_from_inside(sandbox, workspace, "127.0.0.1", port, network=False)
        outside = await connect_from_inside(sandbox, workspace, "192.0.2.1", 80, network=False)
    assert local == {"result": "ECONNREFUSED", "ifaces": ["lo"]}
    assert outside["result"] == "ENETUNREACH"


async def test_network_on_cannot_reach_host_loopback(sandbox: SandboxExecutor, workspace: Path) -> None:
    if sandbox.slirp4netns is None:
        pytest.skip("slirp4netns is not installed")
    with listening_socket() as server:
        port = server.getsockname()[1]
        local = await connect_from_inside(sandbox, workspace, "127.0.0.1", port, network=True)
        gateway = await connect_from_inside(sandbox, workspace, "10.0.2.2", port, network=True)
    assert local["result"] == "ECONNREFUSED" and "tap0" in local["ifaces"]  # type: ignore[operator]
    assert gateway["result"] in ("ENETUNREACH", "ECONNREFUSED", "EHOSTUNREACH", "timed out")


async def test_network_without_slirp_fails_closed(sandbox: SandboxExecutor, workspace: Path) -> None:
    sandbox.slirp4netns = None
    with pytest.raises(ExecutionError, match="slirp4netns"):
        await sandbox.start(ExecSpec(argv=["true"], workspace=workspace, network=True))


async def test_network_without_unshare_fails_closed(sandbox: SandboxExecutor, workspace: Path) -> None:
    sandbox.unshare = None
    with pytest.raises(ExecutionError, match="unshare"):
        await sandbox.start(ExecSpec(argv=["true"], workspace=workspace, network=True))


def needs_slirp(sandbox: SandboxExecutor) -> None:
    if sandbox.slirp4netns is None:
        pytest.skip("network-on sandboxes need slirp4netns")


LOOPBACK = """
import json, socket
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
client = socket.create_connection(server.getsockname(), timeout=3)
conn, _ = server.accept(); client.sendall(b"ping")
print(json.dumps({"lo": conn.recv(4).decode(), "ifaces": sorted(name for _, name in socket.if_nameindex())}))
"""


async def test_concurrent_network_runs_all_start(sandbox: SandboxExecutor, tmp_path: Path) -> None:
    """Regression: bwrap --unshare-net set up lo itself *after* writing the info fd, racing slirp4netns
    (which also sets lo up): ~1 network run in 25 died with "loopback: Failed RTM_NEWADDR" or a
    network-setup error, more when several started at once. Now slirp4netns alone owns lo."""
    needs_slirp(sandbox)
    gate = asyncio.Semaphore(5)

    async def one(i: int) -> tuple[int, str, str]:
        async with gate:
            spec = ExecSpec(argv=["python3", "-c", LOOPBACK], workspace=tmp_path / f"ws{i}", network=True)
            try:
                return await collect(await sandbox.start(spec))
            except ExecutionError as exc:
                return -1, "", str(exc)

    results = await asyncio.gather(*(one(i) for i in range(30)))
    failed = [(code, err) for code, _, err in results if code != 0]
    assert not failed, failed
    for _, out, _ in results:  # loopback works inside, next to slirp's interface
        assert json.loads(out) == {"lo": "ping", "ifaces": ["lo", "tap0"]}


async def test_network_namespace_exists_before_bwrap(sandbox: SandboxExecutor, workspace: Path) -> None:
    """bwrap itself already runs in the sandbox's netns (made by unshare before it), so it has no
    loopback of its own to set up while slirp4netns configures the same namespace."""
    needs_slirp(sandbox)
    marker = sleep_marker()
    execution = await sandbox.start(ExecSpec(argv=["sleep", marker], workspace=workspace, network=True))
    try:
        def sleeping() -> list[int]:  # bwrap's own processes carry the marker in their argv too
            found = []
            for pid in marker_pids(marker):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                        found.append(pid)
            return found

        for _ in range(100):
            if sleeping():
                break
            await asyncio.sleep(0.05)
        [inside] = sleeping()
        bwrap_ns = os.readlink(f"/proc/{execution.inner.proc.pid}/ns/net")
        assert bwrap_ns == os.readlink(f"/proc/{inside}/ns/net")
        assert bwrap_ns != os.readlink("/proc/self/ns/net")
    finally:
        await execution.cancel()


async def test_identity_is_unprivileged(sandbox: SandboxExecutor, workspace: Path) -> None:
    code, out, _ = await run_py(sandbox, workspace, """
        import json
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        print(json.dumps({k: status[k].split() for k in ("Uid", "Gid", "CapEff", "CapPrm", "NoNewPrivs")}))
    """)
    assert code == 0
    status = json.loads(out)
    uid = str(sandbox.section.uid)
    assert status["Uid"] == [uid] * 4 and status["Gid"] == [uid] * 4 and uid != "0"
    assert status["CapEff"] == ["0000000000000000"] and status["CapPrm"] == ["0000000000000000"]
    assert status["NoNewPrivs"] == ["1"]


async def test_nested_user_namespace_is_refused(sandbox: SandboxExecutor, workspace: Path) -> None:
    spec = ExecSpec(argv=["unshare", "-U", "-r", "true"], workspace=workspace, network=False)
    code, _, err = await collect(await sandbox.start(spec))
    assert code != 0, "unshare -U succeeded inside the sandbox"


async def test_environment_is_minimal(sandbox: SandboxExecutor, workspace: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("SERVICE_SECRET_TOKEN", canary)
    spec = ExecSpec(argv=["sh", "-c", "env; echo ---; for f in /proc/[0-9]*/environ; do "
                          "echo \"$f\"; tr '\\0' '\\n' < \"$f\"; done"],
                    env={"AGENT_KEY": "given"}, workspace=workspace, network=False)
    code, out, err = await collect(await sandbox.start(spec))
    assert code == 0, err
    assert canary not in out and canary not in err
    assert "/proc/1/environ" in out  # pid 1 (bwrap's reaper) was readable and checked
    own = {line.split("=", 1)[0] for line in out.split("---")[0].splitlines() if "=" in line}
    assert "AGENT_KEY" in own
    assert own <= {"AGENT_KEY", "PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "OLDPWD"}, own


async def test_memory_limit_is_enforced(sandbox: SandboxExecutor, workspace: Path) -> None:
    fits = await run_py(sandbox, workspace, "b = b'x' * (32 << 20); print('allocated')")
    assert fits[0] == 0 and "allocated" in fits[1]
    code, out, _ = await run_py(sandbox, workspace, "b = b'x' * (600 << 20); print('allocated')")
    assert code != 0 and "allocated" not in out


async def test_process_count_is_bounded(sandbox: SandboxExecutor, workspace: Path) -> None:
    code, out, _ = await run_py(sandbox, workspace, """
        import os, time
        n = 0
        try:
            while n < 200:
                if os.fork() == 0:
                    time.sleep(2); os._exit(0)
                n += 1
            print("forked", n)
        except OSError as exc:
            print("blocked after", n, exc)
    """)
    assert "blocked after" in out, out
    assert int(out.split()[2]) < sandbox.section.pids_max


async def start_marked(sandbox: SandboxExecutor, workspace: Path, marker: str) -> SandboxExecution:
    script = f"trap '' INT TERM; setsid sleep {marker} & sleep {marker} & echo started; wait"
    execution = await sandbox.start(ExecSpec(argv=["sh", "-c", script], workspace=workspace, network=False))
    chunk = await asyncio.wait_for(execution.output().__anext__(), 10)
    assert "started" in chunk.text
    for _ in range(100):
        if len(marker_pids(marker)) >= 2:
            break
        await asyncio.sleep(0.05)
    return execution


async def test_cancel_kills_everything(sandbox: SandboxExecutor, workspace: Path) -> None:
    marker = sleep_marker()
    execution = await start_marked(sandbox, workspace, marker)
    cgroup = execution.info["cgroup"]
    await asyncio.wait_for(execution.cancel(), 10)
    assert await gone(marker, 2), marker_pids(marker)
    assert not cgroup or not Path(cgroup).exists(), "the run's cgroup was not removed"


async def test_timeout_kills_everything(sandbox: SandboxExecutor, workspace: Path) -> None:
    """The run layer enforces timeouts by calling cancel; the whole tree must go within grace."""
    marker = sleep_marker()
    execution = await start_marked(sandbox, workspace, marker)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(execution.wait()), 0.5)
    await execution.cancel()
    await asyncio.wait_for(execution.wait(), 5)
    assert loop.time() - started < 4
    assert await gone(marker, 1), marker_pids(marker)


HELPER = """
import asyncio, sys
from pathlib import Path
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.sandbox import SandboxExecutor
from agent_manager.settings import Settings

async def main():
    executor = SandboxExecutor(Settings(home=Path(sys.argv[1])), sys.argv[2])
    marker = sys.argv[3]
    script = f"setsid sleep {marker} & sleep {marker} & echo started; wait"
    execution = await executor.start(ExecSpec(argv=["sh", "-c", script], workspace=Path(sys.argv[4]),
                                              network=False))
    async for chunk in execution.output():
        print(chunk.text, end="", flush=True)

asyncio.run(main())
"""


async def test_service_death_kills_the_sandbox(tmp_path: Path, workspace: Path) -> None:
    marker, prefix = sleep_marker(), f"sbx-{uuid.uuid4().hex[:8]}"
    helper = subprocess.Popen([sys.executable, "-c", HELPER, str(tmp_path / "home"), prefix, marker,
                               str(workspace)], stdout=subprocess.PIPE, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert helper.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(helper.stdout.readline), 10)
        if not line:
            pytest.skip("helper could not start a sandbox")
        for _ in range(100):
            if len(marker_pids(marker)) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(marker_pids(marker)) >= 2
        os.kill(helper.pid, signal.SIGKILL)
        helper.wait(5)
        assert await gone(marker, 1.0), f"sandbox outlived the service: {marker_pids(marker)}"
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        # A later start of the same instance removes the crashed one's cgroups.
        await SandboxExecutor(make_settings(tmp_path), prefix).close()
