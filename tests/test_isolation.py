"""The execution layer against an attacker: every check is an attack tried from inside a run.

Sandbox half of issue 9's security suite. Each test runs real processes (bwrap, slirp4netns,
cgroups) and asserts what the attack achieved on the host. The parts that depend on who the
service runs as are also run as an unprivileged service (``setpriv`` to nobody), because the
CI service is root and the root-only paths would otherwise be the only ones tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_executors_contract import collect, gone, marker_pids, sleep_marker

from agent_manager.executors.base import ExecSpec
from agent_manager.executors.disk_guard import usage_bytes
from agent_manager.executors.process import descendants
from agent_manager.executors.sandbox import SandboxExecutor
from agent_manager.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")
PRINTK = Path("/proc/sys/kernel/printk_ratelimit")
# A process that leaves its session and clears its environment (the run's tag) while holding stdout.
ESCAPE = "setsid env -i sleep {m} & echo started; exec sleep {m}"


def settings(tmp_path: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"home": tmp_path / "home", "kill_grace_s": 0.3, "stream_close_grace_s": 1.0,
                                 "sandbox_tmp_mb": 16, "sandbox_memory_mb": 128, "sandbox_pids_max": 32}
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxExecutor]:
    executor = SandboxExecutor(settings(tmp_path), f"iso-{uuid.uuid4().hex[:8]}")
    availability = await executor.available()
    assert availability.ok, availability.reason
    yield executor
    await executor.close()


def generic_agent(prompt: str, workspace: Path, **kw: object) -> ExecSpec:
    """The issue's reproduction: a generic agent ``python3 -c 'import sys;exec(sys.argv[1])' {prompt}``."""
    return ExecSpec(argv=["python3", "-c", "import sys;exec(sys.argv[1])", prompt], workspace=workspace,
                    network=kw.pop("network", False), **kw)  # type: ignore[arg-type]


# --- Critical 1: never host root ------------------------------------------------------------------

@pytest.mark.skipif(not ROOT, reason="the host-root escalation only exists when the service is root")
async def test_proc_sys_write_does_not_reach_the_host(sandbox: SandboxExecutor, tmp_path: Path) -> None:
    before = PRINTK.read_text()
    new = "7" if before.strip() != "7" else "9"
    prompt = textwrap.dedent(f"""
        import errno
        for path in ("/proc/sys/kernel/printk_ratelimit", "/proc/sys/kernel/core_pattern",
                     "/proc/sys/net/ipv4/ip_forward", "/proc/sysrq-trigger"):
            try:
                open(path, "w").write({new!r})
                print(path, "WRITTEN")
            except OSError as exc:
                print(path, errno.errorcode[exc.errno])
    """)
    try:
        for network in (False, True):
            code, out, err = await collect(await sandbox.start(generic_agent(prompt, tmp_path / "ws",
                                                                             network=network)))
            assert PRINTK.read_text() == before, "the sandbox changed a host sysctl"
            assert "WRITTEN" not in out, out
            assert code == 0, err
    finally:
        if PRINTK.read_text() != before:  # put the host back even when the test fails
            PRINTK.write_text(before)


@pytest.mark.skipif(not ROOT, reason="the drop only happens when the service is root")
async def test_sandbox_processes_run_as_the_sandbox_user_on_the_host(sandbox: SandboxExecutor,
                                                                     tmp_path: Path) -> None:
    marker = sleep_marker()
    execution = await sandbox.start(ExecSpec(argv=["sleep", marker], workspace=tmp_path / "ws", network=True))
    try:
        for _ in range(100):
            if marker_pids(marker):
                break
            await asyncio.sleep(0.05)
        tree = [execution.inner.proc.pid, *(pid for pid, _ in descendants(execution.inner.proc.pid))]
        assert execution.slirp is not None
        tree.append(execution.slirp.pid)
        uids = {}
        for pid in tree:
            status = Path(f"/proc/{pid}/status").read_text()
            uids[pid] = {line.split()[0]: line.split()[1:] for line in status.splitlines()
                         if line.startswith(("Uid:", "Gid:"))}
        for pid, ids in uids.items():
            assert ids["Uid:"] == [str(NOBODY.pw_uid)] * 4, (pid, ids)
            assert "0" not in ids["Gid:"], (pid, ids)
        assert (tmp_path / "ws").stat().st_uid == NOBODY.pw_uid  # the workspace was handed over
    finally:
        await execution.cancel()


async def test_workspace_under_a_closed_data_dir_is_usable(sandbox: SandboxExecutor, tmp_path: Path) -> None:
    """The data dir is 0700: the sandbox user cannot traverse it, yet its workspace is bound."""
    data = tmp_path / "closed"
    data.mkdir(mode=0o700)
    workspace = data / "workspaces" / "agent"
    code, out, err = await collect(await sandbox.start(generic_agent(
        "open('/workspace/out.txt','w').write('ok'); print(open('/workspace/in.txt').read())", workspace,
        files={"in.txt": b"given"})))
    assert code == 0, err
    assert out.strip() == "given" and (workspace / "out.txt").read_text() == "ok"


async def test_dev_is_no_unbounded_tmpfs(sandbox: SandboxExecutor, tmp_path: Path) -> None:
    """bwrap's /dev is a tmpfs the sandbox user owned: written to, it was host memory beyond every
    limit (3 GiB from a run limited to 256 MiB with the service not root). /dev/shm is bounded
    like /tmp (16 MiB here), the rest of /dev read-only, and the device nodes still work."""
    prompt = textwrap.dedent("""
        import errno
        def fill(path):
            try:
                with open(path, "wb") as fh:
                    for _ in range(64):
                        fh.write(b"\\0" * (1 << 20))
                return "FILLED"
            except OSError as exc:
                return errno.errorcode[exc.errno]
        print("dev", fill("/dev/fill"))
        print("shm", fill("/dev/shm/fill"))
        open("/dev/null", "w").write("x")
        print("null ok", len(open("/dev/urandom", "rb").read(8)))
    """)
    code, out, err = await collect(await sandbox.start(generic_agent(prompt, tmp_path / "ws")))
    assert code == 0, err
    assert "dev EROFS" in out and "shm ENOSPC" in out and "null ok 8" in out, out


# --- Major 4: the environment is on no command line -------------------------------------------------

async def test_agent_env_appears_on_no_command_line(sandbox: SandboxExecutor, tmp_path: Path) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    marker = sleep_marker()
    execution = await sandbox.start(ExecSpec(argv=["sh", "-c", f"echo $SECRET_KEY; sleep {marker}"],
                                             env={"SECRET_KEY": canary}, workspace=tmp_path / "ws",
                                             network=sandbox.slirp4netns is not None))
    try:
        chunk = await asyncio.wait_for(execution.output().__anext__(), 10)
        assert canary in chunk.text  # it did reach the agent
        tree = [execution.inner.proc.pid, *(pid for pid, _ in descendants(execution.inner.proc.pid))]
        if execution.slirp is not None:
            tree += [execution.slirp.pid, *(pid for pid, _ in descendants(execution.slirp.pid))]
        assert len(tree) >= 3
        for pid in tree:
            assert canary.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert canary not in ps
    finally:
        await execution.cancel()


# --- Major 8: disk ---------------------------------------------------------------------------------

WRITE_FILES = """
import os, errno
n = 0
try:
    for i in range(%d):
        with open(f"/workspace/f{i}", "wb") as fh:
            fh.write(os.urandom(1 << 20)); fh.flush(); os.fsync(fh.fileno())
        n += 1
    print("wrote", n)
except OSError as exc:
    print("stopped", n, errno.errorcode[exc.errno])
"""


async def test_workspace_cannot_grow_past_sandbox_disk_mb(tmp_path: Path) -> None:
    limit = 8
    executor = SandboxExecutor(settings(tmp_path, sandbox_disk_mb=limit), f"iso-{uuid.uuid4().hex[:8]}")
    try:
        one = tmp_path / "one"
        code, out, err = await collect(await executor.start(generic_agent(
            "import errno\ntry:\n open('/workspace/big','wb').write(b'x' * (24 << 20)); print('wrote all')\n"
            "except OSError as e: print('stopped', errno.errorcode[e.errno])", one)))
        assert "stopped EFBIG" in out, (code, out, err)
        assert usage_bytes(one) <= (limit << 20) + (1 << 20)

        many = tmp_path / "many"
        # The watcher measures every 0.2 s, so a fast writer overshoots by what it writes in one
        # interval (docs: tens of MiB); 3x an 8 MiB limit fits in one interval on an idle host.
        attempt = 32 * limit
        execution = await executor.start(ExecSpec(argv=["python3", "-c", WRITE_FILES % attempt],
                                                  workspace=many, network=False))
        code, out, err = await collect(execution, timeout=60)
        assert f"wrote {attempt}" not in out, "32x the limit was written"
        assert "disk_exceeded" in execution.info and "sandbox.disk_mb" in err
        assert code != 0
        assert usage_bytes(many) < attempt << 20
    finally:
        await executor.close()


UNLINKED = """
import os, time
for i in range(6):
    fd = os.open(f"/workspace/u{i}", os.O_CREAT | os.O_WRONLY, 0o600)
    os.unlink(f"/workspace/u{i}")  # the workspace looks empty; the blocks are still taken
    for _ in range(7):
        os.write(fd, os.urandom(1 << 20))
    os.fsync(fd)
    time.sleep(0.3)
print("wrote 42 MiB in deleted files")
time.sleep(2)
"""


async def test_deleted_but_open_files_count_towards_sandbox_disk_mb(tmp_path: Path) -> None:
    """Each file stays under RLIMIT_FSIZE and is unlinked before it is written: a walk of the
    workspace sees nothing, yet the disk fills. The guard counts what the run holds open."""
    limit = 8
    executor = SandboxExecutor(settings(tmp_path, sandbox_disk_mb=limit), f"iso-{uuid.uuid4().hex[:8]}")
    try:
        execution = await executor.start(ExecSpec(argv=["python3", "-c", UNLINKED], workspace=tmp_path / "ws"))
        code, out, err = await collect(execution, timeout=60)
        assert "wrote 42" not in out, "5x the limit was written in deleted files"
        assert "disk_exceeded" in execution.info and "sandbox.disk_mb" in err, (code, out, err)
        assert code != 0
    finally:
        await executor.close()


async def test_empty_files_count_towards_sandbox_disk_mb(tmp_path: Path) -> None:
    """Empty files take inodes, not blocks: without a minimum per entry a run could exhaust the
    filesystem's inodes while its workspace measured 0 bytes. 8 MiB = 2048 entries of 4 KiB."""
    executor = SandboxExecutor(settings(tmp_path, sandbox_disk_mb=8), f"iso-{uuid.uuid4().hex[:8]}")
    try:
        script = ("import os, time\nfor i in range(20000):\n    open(f'/workspace/e{i}', 'w').close()\n"
                  "print('made 20000 empty files', flush=True)\ntime.sleep(2)\n")
        execution = await executor.start(ExecSpec(argv=["python3", "-c", script], workspace=tmp_path / "ws"))
        code, out, err = await collect(execution, timeout=60)
        assert "disk_exceeded" in execution.info and "sandbox.disk_mb" in err, (code, out, err)
        assert code != 0
        assert len(os.listdir(tmp_path / "ws")) < 20000
    finally:
        await executor.close()


# --- the rest of the suite: what an untrusted run tries in the sandbox ------------------------------

ATTACKS = """
import errno, json, os, socket, sys
r = {}
def attempt(name, fn):
    try:
        r[name] = fn()
    except OSError as exc:
        r[name] = errno.errorcode.get(exc.errno, str(exc))
attempt("shadow", lambda: open("/etc/shadow").read()[:4])
attempt("root", lambda: os.listdir("/root"))
attempt("data", lambda: os.listdir(sys.argv[1]))
attempt("environ", lambda: [p for p in os.listdir("/proc") if p.isdigit()
                             and sys.argv[2].encode() in open(f"/proc/{p}/environ", "rb").read()])
def connect():
    s = socket.socket(); s.settimeout(2); s.connect(("127.0.0.1", int(sys.argv[3]))); return "CONNECTED"
attempt("loopback", connect)
def egress():
    s = socket.socket(); s.settimeout(2); s.connect(("192.0.2.1", 80)); return "CONNECTED"
attempt("egress", egress)
print(json.dumps(r))
"""


async def test_untrusted_run_reaches_nothing_of_the_host(sandbox: SandboxExecutor, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"service-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AGENT_MANAGER_TEST_SECRET", canary)
    server = __import__("socket").socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        spec = ExecSpec(argv=["python3", "-c", ATTACKS, str(sandbox.settings.home), canary,
                              str(server.getsockname()[1])], workspace=tmp_path / "ws", network=False)
        code, out, err = await collect(await sandbox.start(spec))
    finally:
        server.close()
    assert code == 0, err
    r = json.loads(out)
    assert r["shadow"] in ("ENOENT", "EACCES") and r["root"] in ("ENOENT", "EACCES"), r
    assert r["data"] in ("ENOENT", "EACCES") and r["environ"] == [], r
    assert r["loopback"] == "ECONNREFUSED" and r["egress"] == "ENETUNREACH", r


async def test_sandbox_cancel_ends_setsid_env_cleared_processes(sandbox: SandboxExecutor,
                                                                tmp_path: Path) -> None:
    marker = sleep_marker()
    execution = await sandbox.start(ExecSpec(argv=["sh", "-c", ESCAPE.format(m=marker)],
                                             workspace=tmp_path / "ws", network=False))
    await asyncio.wait_for(execution.output().__anext__(), 10)
    await asyncio.wait_for(execution.cancel(), 5)
    await asyncio.wait_for(collect(execution), 5)
    assert await gone(marker, 2), marker_pids(marker)


BOMBS = {
    "memory": "b = b'x' * (600 << 20); print('allocated')",
    "pids": ("import os, time\nfor _ in range(200):\n    if os.fork() == 0:\n        time.sleep(3); os._exit(0)\n"
             "print('forked all')"),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
async def test_resource_bombs_are_contained(sandbox: SandboxExecutor, tmp_path: Path, bomb: str) -> None:
    code, out, _ = await collect(await sandbox.start(ExecSpec(argv=["python3", "-c", BOMBS[bomb]],
                                                              workspace=tmp_path / "ws", network=False)), 30)
    assert code != 0 and "allocated" not in out and "forked all" not in out, (code, out)


# --- the same, with the service as an unprivileged user ----------------------------------------------

AS_NOBODY = """
import asyncio, json, socket, sys, tempfile
from pathlib import Path
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.sandbox import SandboxExecutor
from agent_manager.settings import Settings

CHECK = '''
import errno, json, socket, sys
r = {}
for p in ("/proc/sys/kernel/printk_ratelimit", "/proc/sys/net/ipv4/ip_forward"):
    try:
        open(p, "w").write("7"); r[p] = "WRITTEN"
    except OSError as exc:
        r[p] = errno.errorcode[exc.errno]
s = socket.socket(); s.settimeout(2)
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); r["loopback"] = "CONNECTED"
except OSError as exc:
    r["loopback"] = errno.errorcode.get(exc.errno, str(exc))
r["ifaces"] = sorted(n for _, n in socket.if_nameindex())
print(json.dumps(r))
'''

async def main():
    home = Path(tempfile.mkdtemp())
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
    executor = SandboxExecutor(Settings(home=home / "home"), sys.argv[1])
    availability = await executor.available()
    assert availability.ok, availability.reason
    result = {}
    bomb = await executor.start(ExecSpec(argv=["python3", "-c", "b = b'x' * (3 << 30); print('allocated')"],
                                         workspace=home / "ws", network=False))
    out = ""
    async for chunk in bomb.output():
        out += chunk.text
    result["memory_bomb"] = {"code": await bomb.wait(), "out": out}
    for network in (False, True):
        execution = await executor.start(ExecSpec(argv=["python3", "-c", CHECK, str(server.getsockname()[1])],
                                                  workspace=home / "ws", network=network))
        out = ""
        async for chunk in execution.output():
            out += chunk.text
        result[str(network)] = {"code": await execution.wait(), "out": out}
    await executor.close()
    print(json.dumps(result))

asyncio.run(main())
"""


@pytest.mark.skipif(not ROOT, reason="needs root to become nobody")
def test_unprivileged_service_sandbox_with_and_without_network() -> None:
    """The service as nobody: sandboxes start, networked ones too (slirp4netns rootless), and
    neither /proc/sys nor the host loopback is reachable."""
    proc = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                           sys.executable, "-c", AS_NOBODY, f"iso-{uuid.uuid4().hex[:8]}"],
                          capture_output=True, text=True, cwd="/", timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["memory_bomb"]["code"] != 0 and "allocated" not in result["memory_bomb"]["out"], result
    for network, expected in (("False", ["lo"]), ("True", ["lo", "tap0"])):
        run = result[network]
        assert run["code"] == 0, run
        r = json.loads(run["out"])
        assert r["ifaces"] == expected, r
        assert r["loopback"] == "ECONNREFUSED", r
        assert r["/proc/sys/kernel/printk_ratelimit"] in ("EROFS", "EACCES"), r
        assert r["/proc/sys/net/ipv4/ip_forward"] in ("EROFS", "EACCES"), r


# --- the reproduction, end to end: an untrusted user through the API --------------------------

@pytest.mark.skipif(not ROOT, reason="the host-root escalation only exists when the service is root")
async def test_untrusted_users_generic_agent_cannot_change_a_host_sysctl(tmp_path: Path) -> None:
    from conftest import in_process_client, running_service
    from helpers import wait_run

    before = PRINTK.read_text()
    new = "7" if before.strip() != "7" else "9"
    home_settings = Settings(home=tmp_path / "home", kill_grace_s=0.3, stream_close_grace_s=0.5)
    try:
        async with running_service(home_settings) as svc, in_process_client(home_settings, svc) as admin:
            r = await admin.post("/api/agents", json={"name": "gen", "kind": "generic", "command": "python3",
                                                      "args": ["-c", "import sys;exec(sys.argv[1])", "{prompt}"]})
            assert r.status_code == 201, r.text
            r = await admin.post("/api/users", json={"name": "mallory", "trusted": False})
            assert r.status_code == 201, r.text
            admin.headers["Authorization"] = f"Bearer {r.json()['token']}"  # from now on: mallory
            prompt = f'open("/proc/sys/kernel/printk_ratelimit","w").write("{new}")'
            r = await admin.post("/api/runs", json={"agent": "gen", "prompt": prompt})
            assert r.status_code == 201, r.text
            run = await wait_run(admin, r.json()["id"], timeout=30)
            assert run["backend"] == "sandbox", run
            assert run["status"] == "failed", run
        assert PRINTK.read_text() == before, "an untrusted user's run changed a host sysctl"
    finally:
        if PRINTK.read_text() != before:
            PRINTK.write_text(before)



@pytest.mark.skipif(not ROOT, reason="sandbox_user only applies to a root service")
async def test_sandbox_is_unavailable_with_a_bad_sandbox_user(tmp_path: Path) -> None:
    for name in ("root", "no-such-user-9a"):
        executor = SandboxExecutor(settings(tmp_path, sandbox_user=name), f"iso-{uuid.uuid4().hex[:8]}")
        availability = await executor.available()
        assert not availability.ok and name in availability.reason, availability
