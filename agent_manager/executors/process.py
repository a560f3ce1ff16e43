"""A child process tree on this host, shared by the local and sandbox backends.

How the tree is found, strongest first:

* **a cgroup per run** (``cgroup.py``) where the host lets us create one: the first process
  joins it before exec, every descendant inherits it whatever it does (``setsid``, ``env -i``,
  double fork), and ``cgroup.kill`` ends them all. A crashed predecessor's groups are swept at
  start-up by name (this data directory's prefix);
* **a tag**: every process carries ``AGENT_MANAGER_TAG=<prefix>:<id>`` in its environment, which
  descendants inherit unless they clear it (``env -i``) — found in ``/proc`` on cancel, after the
  run and after a crash;
* **the parent links**: the descendants of the leader are snapshotted (pid + start time) each
  time the tree is signalled, so a process that cleared its environment is still ended if it
  had not yet been orphaned.

Whatever holds the output pipes, a run's streams end at most ``stream_close_grace_s`` plus one
second after its leader exits (or right after a cancel's last signal): the reader is abandoned.
Seconds in which the pipes were not read because the run's consumer was behind (``pipes.py``:
a producer faster than the disk waits) are not counted, up to a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import Chunk
from agent_manager.executors.cgroup import RunCgroup
from agent_manager.executors.pipes import OutputPipes
from agent_manager.models import Stream

TAG_ENV = "AGENT_MANAGER_TAG"
STREAM_LIMIT = 64 * 1024  # asyncio's stream buffer limit (only stdin's writer uses the protocol's streams)
ABANDON_S = 1.0  # after the last kill, how long a pipe may stay open before we stop reading it
# Host variables an agent CLI legitimately needs; everything else (the service's own
# secrets included) stays out of the child's environment.
PASSTHROUGH_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
                   "SHELL", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR")


def base_environment(environ: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k in PASSTHROUGH_ENV or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def tagged_pids(prefix: str) -> dict[int, str]:
    """Processes whose environment carries a tag starting with ``prefix`` (pid → tag)."""
    found: dict[int, str] = {}
    needle = f"{TAG_ENV}={prefix}".encode()
    own = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            data = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        for item in data.split(b"\0"):
            if item.startswith(needle):
                found[int(entry.name)] = item.split(b"=", 1)[1].decode(errors="replace")
                break
    return found


class _Scans:
    """Shares /proc scans between the runs that end at the same time, and runs them in a thread.

    Why: a scan reads every process's environment (milliseconds with a few hundred processes),
    and every run ends with one. Done on the loop per run, hundreds of concurrent runs spent
    most of the loop's time in it. A caller joins the next scan (never one that began before
    it asked, so nothing started before the request can be missed); one scan finds every tag.
    """

    def __init__(self) -> None:
        self._next: asyncio.Future[dict[int, str]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def tagged(self, prefix: str) -> dict[int, str]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        future = self._next
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        found = await asyncio.shield(future)
        return {pid: tag for pid, tag in found.items() if tag.startswith(prefix)}

    async def _work(self) -> None:
        while (future := self._next) is not None:
            self._next = None
            try:
                future.set_result(await asyncio.to_thread(tagged_pids, ""))
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:  # the waiters get it
                future.set_exception(exc)


_scans: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Scans] = weakref.WeakKeyDictionary()


async def tagged_pids_async(prefix: str) -> dict[int, str]:
    """``tagged_pids`` off the loop, one shared scan for every caller waiting at the same time."""
    loop = asyncio.get_running_loop()
    scans = _scans.get(loop)
    if scans is None:
        scans = _scans[loop] = _Scans()
    return await scans.tagged(prefix)


def signal_tagged(prefix: str, sig: int) -> int:
    """Send ``sig`` to every process tagged with ``prefix``; returns how many were signalled."""
    count = 0
    for pid in tagged_pids(prefix):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            count += 1
    return count


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, comm) of every process below ``root``, found through the parent links in /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append((int(entry.name), comm))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a process from a later one reusing its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[19]


def ctty_prefix() -> list[str]:
    """What makes a PTY slave on fd 0 the controlling terminal of the command after it: a new
    session (``setsid``, which forks when it is already a group leader, and ``--wait`` keeps
    the exit status), then ``TIOCSCTTY``. A separate program, because ``preexec_fn`` is not
    safe in a threaded service. util-linux's setsid lives in /usr/bin, so a sandbox sees it too."""
    return [shutil.which("setsid", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/setsid", "--wait", "--ctty"]


class _PidfdWatcher(asyncio.AbstractChildWatcher):
    """Python 3.11's default child watcher starts a thread per child and waits until that thread
    runs: on a busy host that was a fifth of a run's spawn time (a DAG hop). This one, 3.12's
    default design, watches a pidfd on the loop that spawned the child, whichever thread runs
    it (3.11's own PidfdChildWatcher is bound to one loop, which breaks a service whose loop is
    not the main thread's). Installed only before 3.12, where ``os.pidfd_open`` works."""

    def __enter__(self) -> _PidfdWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        pass

    def add_child_handler(self, pid: int, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        loop.add_reader(pidfd, self._reap, loop, pid, pidfd, callback, args)

    def remove_child_handler(self, pid: int) -> bool:
        return False

    @staticmethod
    def _reap(loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, callback: Callable[..., object],
              args: tuple[Any, ...]) -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere
            code = 255
        callback(pid, code, *args)


_watcher_checked = False


def _fast_child_watcher() -> None:
    """Install ``_PidfdWatcher`` once, if this Python and kernel call for it."""
    global _watcher_checked
    if _watcher_checked:
        return
    _watcher_checked = True
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an old kernel (before 5.3) or a seccomp filter: keep asyncio's default
        return
    asyncio.get_event_loop_policy().set_child_watcher(_PidfdWatcher())


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own subprocess protocol (it keeps ``proc.stdin``), plus a future of the exit
    code resolved when the leader exits: no polling, and never delayed by a pipe that a
    descendant holds (``Process.wait`` before 3.12 also waits for the pipes)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exit: asyncio.Future[int] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._process: asyncio.SubprocessTransport | None = transport  # type: ignore[assignment]

    def process_exited(self) -> None:
        super().process_exited()
        code = self._process.get_returncode() if self._process is not None else None
        if not self.exit.done():
            self.exit.set_result(code if code is not None else -1)


def new_tag(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:16]}"


class ProcessExecution:
    """A started process: streams its output, waits for it, ends its whole tree."""

    def __init__(self, proc: asyncio.subprocess.Process, tag: str, *, kill_grace_s: float,
                 stream_close_grace_s: float, info: dict[str, str] | None = None,
                 cgroup: RunCgroup | None = None, output_fds: dict[Stream, int] | None = None,
                 exit_code: asyncio.Future[int] | None = None) -> None:
        """``output_fds``: the read ends of the process's stdout and stderr pipes (owned from
        now on; none for a process on a terminal). ``exit_code``: resolved when it exits."""
        self.proc = proc
        self.tag = tag
        self.cgroup = cgroup
        self._known: dict[int, str] = {}  # descendants seen while the leader lived: pid → start time
        self._killed = asyncio.Event()
        self.info = info or {"pid": str(proc.pid)}
        self._kill_grace_s = kill_grace_s
        self._stream_close_grace_s = stream_close_grace_s
        # A process on a terminal (``spawn(tty=...)``) has no pipes: its bytes go through the PTY.
        self._pipes = OutputPipes(output_fds or {})
        self._exit: asyncio.Future[int] = exit_code if exit_code is not None else asyncio.ensure_future(proc.wait())
        self._watcher = asyncio.create_task(self._watch())
        self._cancel_lock = asyncio.Lock()
        self._stdin_task: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(cls, argv: list[str], *, env: dict[str, str], cwd: str | None, stdin: bytes | None,
                    tag: str, kill_grace_s: float, stream_close_grace_s: float,
                    info: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
                    cgroup: RunCgroup | None = None, tty: int | None = None) -> ProcessExecution:
        """``tty``: a PTY slave fd to use as stdin, stdout and stderr (interactive terminals);
        ``argv`` must then make it the controlling terminal itself (``setsid --ctty``)."""
        env = {**env, TAG_ENV: tag}
        sub = asyncio.subprocess
        stdin_fd = tty if tty is not None else sub.PIPE if stdin is not None else sub.DEVNULL
        _fast_child_watcher()
        loop = asyncio.get_running_loop()
        # Our own pipes for stdout and stderr (read by ``OutputPipes``); a terminal has none.
        pipes: dict[Stream, tuple[int, int]] = {} if tty is not None else {"stdout": os.pipe(), "stderr": os.pipe()}
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitProtocol(STREAM_LIMIT, loop), *argv, stdin=stdin_fd,
                stdout=pipes["stdout"][1] if pipes else tty, stderr=pipes["stderr"][1] if pipes else tty,
                cwd=cwd, env=env, start_new_session=True, pass_fds=pass_fds)
        except BaseException as exc:
            for read_end, _write_end in pipes.values():
                os.close(read_end)
            if isinstance(exc, FileNotFoundError):
                missing = argv[0] if not cwd or not Path(cwd).exists() or exc.filename == argv[0] else exc.filename
                raise ExecutionError(f"executable not found: {missing}", {"argv0": argv[0]}) from exc
            if isinstance(exc, PermissionError):
                raise ExecutionError(f"cannot execute {argv[0]}: permission denied") from exc
            raise
        finally:
            for _read_end, write_end in pipes.values():  # the child has its own copies
                os.close(write_end)
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        execution = cls(proc, tag, kill_grace_s=kill_grace_s, stream_close_grace_s=stream_close_grace_s,
                        info=info, cgroup=cgroup, output_fds={stream: ends[0] for stream, ends in pipes.items()},
                        exit_code=protocol.exit)
        if stdin is not None and tty is None:
            execution._stdin_task = asyncio.create_task(execution._feed_stdin(stdin))
        return execution

    async def _feed_stdin(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.proc.stdin.close()

    async def _watch(self) -> None:
        """After the leader exits, give the pipes a grace period, then end what holds them; if
        something we cannot find still holds them a second later, stop reading (never hang).
        Time in which the pipes were not read because the run's consumer was behind does not
        count: that is not a process holding them."""
        await self.exited()
        killed: asyncio.Future[Any] = asyncio.ensure_future(self._killed.wait())
        closed = await self._pipes.wait_closed(self._stream_close_grace_s, also=killed)
        killed.cancel()
        if not closed or await tagged_pids_async(self.tag) or (self.cgroup is not None and self.cgroup.pids()):
            self.kill_tree()
        if not await self._pipes.wait_closed(ABANDON_S):
            self._pipes.abandon()  # a process we could not find holds a pipe: close our end
        if self.cgroup is not None:
            self.cgroup.kill()
            await asyncio.to_thread(self.cgroup.remove)
        self._pipes.end()

    @property
    def finished(self) -> asyncio.Task[None]:
        """Done once the process, its streams and its cgroup are gone."""
        return self._watcher

    async def exited(self) -> int:
        """The leader's exit code, as soon as it exits. Not ``proc.wait()``: before Python 3.12
        that also waits for the pipes to close, which a leftover descendant can delay forever."""
        return await asyncio.shield(self._exit)

    def _leftovers(self) -> bool:
        return bool(tagged_pids(self.tag) or (self.cgroup is not None and self.cgroup.pids()))

    async def note(self, stream: Stream, text: str) -> None:
        """Add a line of the service's own to the run's output (e.g. why it was stopped)."""
        self._pipes.add(stream, text)

    def kill_tree(self) -> None:
        """SIGKILL everything of this run now: cgroup, group, tag, remembered descendants."""
        self._signal_tree(signal.SIGKILL)
        self._killed.set()

    async def output(self) -> AsyncIterator[Chunk]:
        """What the process printed, as it arrives: everything pending at each step, consecutive
        pieces of one stream joined (``OutputPipes``), stdout and stderr in arrival order."""
        while chunks := await self._pipes.chunks():
            for chunk in chunks:
                yield chunk

    async def wait(self) -> int:
        await asyncio.shield(self._watcher)
        code = self.proc.returncode
        return code if code is not None else -1

    async def cancel(self) -> None:
        """SIGINT, then SIGTERM, then SIGKILL — to the cgroup, the group and every escapee."""
        async with self._cancel_lock:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                if self.proc.returncode is not None and not self._leftovers():
                    break
                if sig == signal.SIGKILL:
                    self.kill_tree()
                    break
                self._signal_tree(sig)
                await self._until_gone(self._kill_grace_s)
            self._killed.set()
            await self.exited()

    def _signal_tree(self, sig: int) -> None:
        if self.proc.returncode is None:
            for pid, _comm in descendants(self.proc.pid):
                started = start_time(pid)
                if started is not None:
                    self._known.setdefault(pid, started)
        if self.cgroup is not None:
            if sig == signal.SIGKILL:
                self.cgroup.kill()
            else:
                for pid in self.cgroup.pids():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        signal_tagged(self.tag, sig)
        for pid, started in list(self._known.items()):
            if start_time(pid) != started:  # gone, or the pid now belongs to someone else
                del self._known[pid]
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    async def _until_gone(self, seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            if self.proc.returncode is not None and not self._leftovers():
                return
            await asyncio.sleep(min(0.05, seconds))


class LiveTrees:
    """The process trees one host backend has running, so that its ``close`` ends them all and,
    by tag, whatever they left behind: one shutdown for the built-in and plugin host backends."""

    def __init__(self, tag_prefix: str) -> None:
        self.tag_prefix = tag_prefix
        self._live: set[ProcessExecution] = set()

    def add(self, execution: ProcessExecution) -> ProcessExecution:
        self._live.add(execution)
        execution.finished.add_done_callback(lambda _task: self._live.discard(execution))
        return execution

    def __len__(self) -> int:
        return len(self._live)

    async def close(self, grace_s: float = 5.0) -> None:
        """SIGKILL every tree and every process carrying this backend's tag, then wait (bounded) for them."""
        for execution in list(self._live):
            execution.kill_tree()
        signal_tagged(self.tag_prefix + ":", signal.SIGKILL)
        for execution in list(self._live):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(execution.finished), grace_s)
