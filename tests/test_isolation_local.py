"""Isolation of local runs (issue 9): every process of a run ends with it, whatever it does to
its environment or session, and runs of non-admin users drop to ``run_as`` (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_executors_contract import collect, gone, marker_pids, sleep_marker
from test_isolation import ESCAPE, NOBODY, REPO, ROOT, settings

from agent_manager.executors.base import ExecSpec
from agent_manager.executors.local import LocalExecutor


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalExecutor]:
    executor = LocalExecutor(settings(tmp_path), f"iso-{uuid.uuid4().hex[:8]}", {"PATH": os.environ["PATH"]})
    yield executor
    await executor.close()



# --- Major 7: local runs end whole, whatever they do --------------------------------------------------



async def test_local_cancel_ends_an_env_cleared_setsid_escapee(local: LocalExecutor, tmp_path: Path) -> None:
    marker = sleep_marker()
    execution = await local.start(ExecSpec(argv=["sh", "-c", ESCAPE.format(m=marker)], workspace=tmp_path))
    chunk = await asyncio.wait_for(execution.output().__anext__(), 10)
    assert "started" in chunk.text
    for _ in range(100):
        if len(marker_pids(marker)) >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.wait_for(execution.cancel(), 5)
    # the escapee held stdout: the stream must still end, and promptly
    await asyncio.wait_for(collect(execution), 5)
    assert await gone(marker, 2), marker_pids(marker)


async def test_local_run_whose_leader_exits_does_not_hang_on_a_held_pipe(local: LocalExecutor,
                                                                         tmp_path: Path) -> None:
    marker = sleep_marker()
    script = f"setsid env -i sleep {marker} & echo started"
    code, out, _ = await collect(await local.start(ExecSpec(argv=["sh", "-c", script], workspace=tmp_path)),
                                 timeout=10)
    assert code == 0 and "started" in out
    assert await gone(marker, 2), marker_pids(marker)


LOCAL_HELPER = """
import asyncio, sys
from pathlib import Path
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.local import LocalExecutor
from agent_manager.settings import Settings

async def main():
    executor = LocalExecutor(Settings(home=Path(sys.argv[1])), sys.argv[2], {"PATH": "/usr/bin:/bin"})
    m = sys.argv[3]
    execution = await executor.start(ExecSpec(argv=["sh", "-c", f"setsid env -i sleep {m} & echo started; wait"],
                                              workspace=Path(sys.argv[4])))
    async for chunk in execution.output():
        print(chunk.text, end="", flush=True)

asyncio.run(main())
"""


@pytest.mark.skipif(not ROOT, reason="run cgroups need a writable cgroupfs (root)")
async def test_local_escapee_is_killed_at_the_next_start_after_a_crash(tmp_path: Path) -> None:
    marker, prefix = sleep_marker(), f"iso-{uuid.uuid4().hex[:8]}"
    helper = subprocess.Popen([sys.executable, "-c", LOCAL_HELPER, str(tmp_path / "home"), prefix, marker,
                               str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert helper.stdout is not None
        assert await asyncio.wait_for(asyncio.to_thread(helper.stdout.readline), 10)
        for _ in range(100):
            if marker_pids(marker):
                break
            await asyncio.sleep(0.05)
        assert marker_pids(marker)
        os.kill(helper.pid, signal.SIGKILL)
        helper.wait(5)
        await asyncio.sleep(0.2)
        assert marker_pids(marker), "expected the escapee to outlive the crashed service"
        await LocalExecutor(settings(tmp_path), prefix).close()  # the next start of the same data dir
        assert await gone(marker, 2), marker_pids(marker)
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()


# --- run_as (local) ---------------------------------------------------------------------------------

@pytest.mark.skipif(not ROOT, reason="switching users needs a root service")
async def test_run_as_drops_to_the_user(local: LocalExecutor, tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("secret")
    secret.chmod(0o600)
    data = tmp_path / "home"
    data.mkdir(mode=0o700, exist_ok=True)
    (data / "admin-token").write_text("token")
    workspace = tmp_path / "userws"
    script = textwrap.dedent(f"""
        import json, os
        r = {{"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}}
        for name, path in (("secret", {str(secret)!r}), ("token", {str(data / 'admin-token')!r})):
            try:
                open(path).read(); r[name] = "READ"
            except OSError as exc:
                r[name] = exc.strerror
        try:
            os.listdir({str(data)!r}); r["data"] = "LISTED"
        except OSError as exc:
            r["data"] = exc.strerror
        open("out.txt", "w").write("ok")
        r["nnp"] = [l for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0].split()[1]
        print(json.dumps(r))
    """)
    code, out, err = await collect(await local.start(ExecSpec(
        argv=["/usr/bin/python3", "-c", script], workspace=workspace, run_as="nobody", files={"in.txt": b"x"})))
    assert code == 0, err
    r = json.loads(out)
    assert r["uid"] == NOBODY.pw_uid and r["gid"] == NOBODY.pw_gid and 0 not in r["groups"]
    assert r["secret"] != "READ" and r["token"] != "READ" and r["data"] != "LISTED", r
    assert r["nnp"] == "1"
    assert (workspace / "out.txt").stat().st_uid == NOBODY.pw_uid
    assert (workspace / "in.txt").stat().st_uid == NOBODY.pw_uid


# --- local runs without writable cgroups (the service as nobody) ---------------------------------------

LOCAL_AS_NOBODY = """
import asyncio, json, sys, tempfile
from pathlib import Path
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.local import LocalExecutor
from agent_manager.settings import Settings

async def main():
    home = Path(tempfile.mkdtemp())
    executor = LocalExecutor(Settings(home=home / "home", kill_grace_s=0.3, stream_close_grace_s=0.5),
                             sys.argv[1], {"PATH": "/usr/bin:/bin"})
    m = sys.argv[2]
    execution = await executor.start(ExecSpec(argv=["sh", "-c", f"setsid env -i sleep {m} & echo started; "
                                                    f"exec sleep {m}"], workspace=home / "ws"))
    await execution.output().__anext__()
    await asyncio.sleep(0.3)
    await asyncio.wait_for(execution.cancel(), 5)
    async for _ in execution.output():
        pass
    print(json.dumps({"cgroup": execution.cgroup is not None, "code": await asyncio.wait_for(execution.wait(), 5)}))

asyncio.run(main())
"""


@pytest.mark.skipif(not ROOT, reason="needs root to become nobody")
async def test_local_cancel_without_cgroups_still_ends_the_escapee() -> None:
    """The fallback (no writable cgroupfs): the escapee is found through the parent links seen
    while the leader lived, and the stream it holds does not keep the run alive."""
    marker = sleep_marker()
    proc = await asyncio.to_thread(
        subprocess.run, ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                         sys.executable, "-c", LOCAL_AS_NOBODY, f"iso-{uuid.uuid4().hex[:8]}", marker],
        capture_output=True, text=True, cwd="/", timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cgroup"] is False  # nobody cannot create cgroups: this is the fallback path
    assert await gone(marker, 2), marker_pids(marker)


async def test_run_as_refuses_root_and_unknown_users(local: LocalExecutor, tmp_path: Path) -> None:
    from agent_manager.errors import ExecutionError

    for name, message in (("root", "is root"), ("no-such-user-9a", "does not exist")):
        with pytest.raises(ExecutionError, match=message):
            await local.start(ExecSpec(argv=["true"], workspace=tmp_path / "ws", run_as=name))

