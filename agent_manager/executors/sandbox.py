"""The ``sandbox`` backend: the agent runs on this host inside a bubblewrap (``bwrap``) sandbox.

What it is made of, and why (measurements: the isolation notes; user doc: docs/backends-sandbox.md):

* **never host root.** A root service drops to ``sandbox.user`` (default ``nobody``) *before* bwrap,
  so the sandbox's user namespace maps to that uid: one made by root maps its "unprivileged" uid to
  host root, and ``/proc/sys`` writes inside (``kernel.core_pattern``) would own the host.
  ``/proc/sys``, ``/proc/sysrq-trigger`` & co. are also bound read-only over the fresh ``/proc``.
  The launch chain, one pid exec'ing into the next: ``unshare --mount`` + ``sh`` (as root: join
  the run's cgroups, stage host paths the sandbox user cannot traverse to) → ``prlimit`` (file
  size cap) → ``setpriv`` (drop) → [``unshare --user --map-root-user --net`` if networked] → ``bwrap``;
* a mount namespace with only read-only system dirs, a few non-secret ``/etc`` files, a generated
  passwd/hosts/resolv.conf, a size-bounded private ``/tmp``, the workspace at ``/workspace`` (the
  only writable place, handed over to the sandbox user) and, read-only at their host paths, the
  dirs holding the agent executable and its interpreter; ``--remount-ro /`` (sandbox_profile.py);
* all namespaces unshared, ``--disable-userns``, ``--cap-drop ALL``, ``--new-session``;
* the environment reaches the agent through bwrap's ``--args`` memfd, never a command line, and
  bwrap itself starts with a minimal environment (pid 1 inside shows bwrap's environment);
* ``--die-with-parent`` and a pid namespace: if the service dies, the sandbox dies; bwrap is
  spawned from the event-loop thread, because the parent-death signal follows the thread;
* no network unless ``spec.network`` is True, and then ``slirp4netns --disable-host-loopback``,
  run as the sandbox user and joining the run's own user+net namespace by pid (as rootless podman
  does), so it works whether or not the service is root. Egress works, the host's loopback —
  where this service listens — does not. Else fail closed;
* a per-run cgroup for memory/pids/cpu (``cgroup.py``), or rlimits via ``prlimit`` when cgroups
  are not writable; ``sandbox.disk_mb`` caps what a run adds to its workspace (``disk_guard.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import Availability, Chunk, ExecSpec
from agent_manager.executors.cgroup import RunCgroup, cgroup_name, sweep
from agent_manager.executors.disk_guard import DiskGuard
from agent_manager.executors.identity import HostUser, drop_to, hand_over, prepare_workspace
from agent_manager.executors.process import (
    TAG_ENV,
    ProcessExecution,
    ctty_prefix,
    descendants,
    new_tag,
    signal_tagged,
)
from agent_manager.executors.pty import HostPty
from agent_manager.executors.sandbox_profile import (
    STAGE_SCRIPT,
    Program,
    bwrap_options,
    data_files,
    resolve_program,
    stage_root,
)
from agent_manager.executors.sandbox_settings import SandboxSettings
from agent_manager.plugins import HOST, ISOLATED, BackendContext, BackendPlugin
from agent_manager.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import Histogram

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NO_BWRAP = "bubblewrap is not installed: apt-get install bubblewrap"
NO_SLIRP = ("this run needs network access, but the sandbox only provides it through slirp4netns "
            "(apt-get install slirp4netns), which is not installed; the sandbox never shares the host "
            "network. Install it, or turn network off for this agent")
NO_UNSHARE = ("the sandbox needs unshare and nsenter (util-linux) to make and join its network and mount "
              "namespaces, and they are not installed: apt-get install util-linux")
APPARMOR_HINT = (" — on Ubuntu 23.10+ AppArmor blocks unprivileged user namespaces "
                 "(kernel.apparmor_restrict_unprivileged_userns=1); add an AppArmor profile for bwrap")
SETUP_TIMEOUT_S = 10.0
PROBE_RETRY_S = 30.0  # a failed probe is retried after this long
# bwrap's own environment — pid 1 inside shows it, so nothing of the service's.
SPAWN_ENV = {"PATH": SYSTEM_PATH}


class _Fds:
    """File descriptors handed to the child; the parent closes its copies after the spawn."""

    def __init__(self) -> None:
        self.child: list[int] = []

    def data(self, content: str) -> int:
        read, write = os.pipe()
        os.write(write, content.encode())  # far below the pipe buffer
        os.close(write)
        self.child.append(read)
        return read

    def memfd(self, content: bytes) -> int:
        """A file holding ``content`` (no pipe-buffer limit), readable by the child from offset 0."""
        fd = os.memfd_create("agent-manager-bwrap-args", 0)
        os.write(fd, content)
        os.lseek(fd, 0, os.SEEK_SET)
        self.child.append(fd)
        return fd

    def pipe(self, parent_reads: bool) -> tuple[int, int]:  # (parent end, child end)
        read, write = os.pipe()
        parent, child = (read, write) if parent_reads else (write, read)
        self.child.append(child)
        return parent, child

    def close(self) -> None:
        for fd in self.child:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child.clear()


class SandboxExecution:
    """A ProcessExecution (bwrap's own process) plus what the sandbox adds around it: the
    cgroup, the slirp4netns helper, and a graceful phase that signals the agent *inside*
    first (signalling bwrap would kill the whole sandbox at once, with no chance to save)."""

    def __init__(self, inner: ProcessExecution, cgroup: RunCgroup | None, kill_grace_s: float,
                 guard: DiskGuard | None = None) -> None:
        self.inner = inner
        self.info = inner.info
        self.cgroup = cgroup
        self.guard = guard
        self.slirp: asyncio.subprocess.Process | None = None
        self.slirp_exit_fd: int | None = None
        self._kill_grace_s = kill_grace_s
        self._cancel_lock = asyncio.Lock()
        self._cleanup = asyncio.create_task(self._cleanup_after_exit())
        if guard is not None:
            guard.start()

    def output(self) -> AsyncIterator[Chunk]:
        return self.inner.output()

    async def wait(self) -> int:
        code = await self.inner.wait()
        await asyncio.shield(self._cleanup)
        return code

    async def cancel(self) -> None:
        """SIGINT, then SIGTERM to the agent's processes inside, then SIGKILL to everything."""
        async with self._cancel_lock:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if self.inner.proc.returncode is not None:
                    break
                for pid, comm in descendants(self.inner.proc.pid):
                    if comm != "bwrap":
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, sig)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.inner.exited()), self._kill_grace_s)
            if self.cgroup is not None:
                self.cgroup.kill()
            await self.inner.cancel()
            await asyncio.shield(self._cleanup)

    async def _cleanup_after_exit(self) -> None:
        """Once bwrap is gone: stop slirp, empty and remove the cgroup, note OOM kills."""
        await self.inner.wait()
        if self.guard is not None:
            await self.guard.stop()
        await self.stop_network()
        if self.cgroup is not None:
            self.cgroup.kill()
            kills = self.cgroup.oom_kills()
            if kills:
                self.info["oom_kills"] = str(kills)
            await asyncio.to_thread(self.cgroup.remove)

    async def disk_exceeded(self, added: int) -> None:
        """The workspace grew past ``sandbox.disk_mb``: say so on stderr, end everything now."""
        assert self.guard is not None
        limit_mb = self.guard.limit_bytes >> 20
        self.info["disk_exceeded"] = f"{added >> 20} MiB written, limit {limit_mb} MiB"
        await self.inner.note("stderr", f"\n[agent-manager] the run wrote {added >> 20} MiB into its workspace, "
                                        f"over the sandbox.disk_mb limit of {limit_mb} MiB; it was stopped.\n")
        if self.cgroup is not None:
            self.cgroup.kill()
        self.inner.kill_tree()

    async def stop_network(self) -> None:
        if self.slirp_exit_fd is not None:  # closing it tells slirp4netns to exit
            with contextlib.suppress(OSError):
                os.close(self.slirp_exit_fd)
            self.slirp_exit_fd = None
        if self.slirp is not None and self.slirp.returncode is None:
            try:
                await asyncio.wait_for(self.slirp.wait(), 1.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.slirp.kill()
                await self.slirp.wait()


class SandboxExecutor:
    name = "sandbox"

    def __init__(self, settings: Settings, tag_prefix: str, host_path: str = SYSTEM_PATH,
                 section: SandboxSettings | None = None) -> None:
        self.settings = settings  # the service's: timeouts, grace periods, the data directory
        # This backend's own section ([sandbox]): the plugin's factory passes it; read at use time.
        self.section = section if section is not None else _section(settings)
        self.tag_prefix = tag_prefix
        self.bwrap = shutil.which("bwrap", path=SYSTEM_PATH)
        self.slirp4netns = shutil.which("slirp4netns", path=SYSTEM_PATH)
        self.prlimit = shutil.which("prlimit", path=SYSTEM_PATH)
        self.unshare = shutil.which("unshare", path=SYSTEM_PATH)
        self.nsenter = shutil.which("nsenter", path=SYSTEM_PATH)
        self.sh = shutil.which("sh", path=SYSTEM_PATH) or "/bin/sh"
        self.root = os.geteuid() == 0
        self.host_path = host_path  # where agent executables are looked up on the host
        self._availability: Availability | None = None
        self._probe_lock = asyncio.Lock()
        self._retry_at = 0.0
        self._live: set[SandboxExecution] = set()
        self.create_seconds: Histogram | None = None  # a sandbox here is a process: nothing to create
        with contextlib.suppress(OSError):
            sweep(tag_prefix)  # groups a crashed predecessor (same data dir) left behind

    def user(self) -> HostUser | None:
        """Who the sandbox runs as on the host: ``sandbox.user`` when the service is root, else
        the service's own user (``None``: nothing to switch)."""
        return HostUser.resolve(self.section.user) if self.root else None

    def host_user_name(self) -> str | None:
        """The host user other backends' users must differ from (runs.py checks run_as_user)."""
        return self.section.user if self.root else None

    async def available(self) -> Availability:
        """Cached: bwrap present, and a trivial sandbox with the real profile actually runs.

        A failure is cached only for ``PROBE_RETRY_S``: a transient one (a full /tmp, a
        momentary fork failure) must not keep untrusted runs failing until a restart."""
        if self._availability is not None and (self._availability.ok or time.monotonic() < self._retry_at):
            return self._availability
        async with self._probe_lock:
            if self._availability is None or (not self._availability.ok and time.monotonic() >= self._retry_at):
                self._availability = await self._probe()
                self._retry_at = time.monotonic() + PROBE_RETRY_S
        return self._availability

    def forget_probe(self) -> None:
        """A setting the probe ran with changed (limits, uid, user): probe again when next asked."""
        self._availability = None

    async def settings_changed(self, changed: set[str]) -> None:
        """``changed``: fields of [sandbox]; the cached verdict was reached with the old limits."""
        if changed:
            self.forget_probe()

    @staticmethod
    def workspace_path(workspace: Path, name: str) -> str:  # mounted at /workspace inside
        return f"/workspace/{name}"

    async def open_pty(self, spec: ExecSpec, cols: int, rows: int, shell: bool) -> HostPty:
        return await HostPty.open(self, spec, cols, rows)

    async def _probe(self) -> Availability:
        if self.bwrap is None:
            return Availability(False, NO_BWRAP)
        if self.root and self.unshare is None:
            return Availability(False, NO_UNSHARE)
        fds = _Fds()
        try:
            user = self.user()
            argv = self._launch_argv(ExecSpec(argv=["/bin/true"]), Program(["/bin/true"]), None, user, fds,
                                     network=None)
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=SPAWN_ENV, cwd="/", pass_fds=fds.child)
            fds.close()
            try:
                _, err = await asyncio.wait_for(proc.communicate(), SETUP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return Availability(False, "the bubblewrap probe did not finish in time")
        except ExecutionError as exc:
            return Availability(False, exc.message)
        except OSError as exc:
            return Availability(False, f"cannot start bubblewrap: {exc}")
        finally:
            fds.close()
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
            hint = APPARMOR_HINT if "uid map" in message or "Permission denied" in message else ""
            return Availability(False, f"bubblewrap cannot create a sandbox here: {message}{hint}")
        return Availability(True)

    async def start(self, spec: ExecSpec) -> SandboxExecution:
        availability = await self.available()
        if not availability.ok:
            raise ExecutorUnavailable(availability.reason)
        network = spec.network is True
        if network:  # fail closed: never the host's network
            missing = (NO_SLIRP if self.slirp4netns is None
                       else NO_UNSHARE if self.unshare is None or self.nsenter is None else "")
            if missing:
                raise ExecutionError(missing)
        program = resolve_program(spec, self.host_path, self.settings)
        if spec.tty is not None:  # an interactive terminal: bwrap's --new-session stays, setsid runs inside it
            program = dataclasses.replace(program, argv=[*ctty_prefix(), *program.argv])
        user = self.user()
        guard = None
        if spec.workspace is not None:
            await asyncio.to_thread(prepare_workspace, spec.workspace, spec.files, user, spec.hand_over)
            guard = await asyncio.to_thread(DiskGuard, spec.workspace, self.section.disk_mb << 20,
                                            self._noop)
        for mount in spec.mounts:  # writable extra mounts (a worktree's private git dir) too
            source = mount.source
            if mount.writable and source is not None and user is not None:
                await asyncio.to_thread(hand_over, source, user)
        tag = new_tag(self.tag_prefix)
        memory_mb = spec.resources.memory_mb or self.section.memory_mb
        cgroup = RunCgroup.create(cgroup_name(self.tag_prefix, tag.rsplit(":", 1)[-1]), memory_mb=memory_mb,
                                  pids_max=self.section.pids_max, cpu=spec.resources.cpu)
        fds = _Fds()
        info_r = block_w = -1
        try:
            net_fds = None
            if network:
                info_r, info_w = fds.pipe(parent_reads=True)
                block_w, block_r = fds.pipe(parent_reads=False)
                net_fds = (info_w, block_r)
            full = self._launch_argv(spec, program, cgroup, user, fds, network=net_fds, memory_mb=memory_mb)
            inner = await ProcessExecution.spawn(
                full, env=SPAWN_ENV, cwd="/", stdin=spec.stdin, tag=tag,
                kill_grace_s=self.settings.kill_grace_s,
                stream_close_grace_s=self.settings.stream_close_grace_s,
                info={"sandbox": "bwrap", "cgroup": cgroup.path if cgroup else "", "tag": tag,
                      "host_user": user.name if user else ""},
                pass_fds=tuple(fds.child), tty=spec.tty)
        except BaseException:
            fds.close()
            for fd in (info_r, block_w):
                if fd >= 0:
                    os.close(fd)
            if cgroup is not None:
                cgroup.remove()
            raise
        fds.close()
        inner.info["pid"] = str(inner.proc.pid)
        if guard is not None:  # whose open-but-deleted files count too
            leader = inner.proc.pid
            guard.pids = ((lambda: sorted(cgroup.pids())) if cgroup is not None
                          else (lambda: [leader, *(pid for pid, _ in descendants(leader))]))
        execution = SandboxExecution(inner, cgroup, self.settings.kill_grace_s, guard)
        if guard is not None:
            guard.on_exceeded = execution.disk_exceeded
        self._live.add(execution)
        execution._cleanup.add_done_callback(lambda _t: self._live.discard(execution))
        if network:
            try:
                await asyncio.wait_for(self._connect_network(execution, info_r, block_w, tag, user),
                                       SETUP_TIMEOUT_S)
            except (TimeoutError, OSError, ValueError, ExecutionError) as exc:
                await execution.cancel()
                raise ExecutionError(f"could not set up the sandbox network: {exc}") from exc
            finally:
                for fd in (info_r, block_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
        return execution

    @staticmethod
    async def _noop(_added: int) -> None:  # replaced once the execution exists
        return None

    def _launch_argv(self, spec: ExecSpec, program: Program, cgroup: RunCgroup | None, user: HostUser | None,
                     fds: _Fds, network: tuple[int, int] | None, memory_mb: int = 0) -> list[str]:
        """The whole exec chain (see the module docstring); every link execs the next on one pid."""
        assert self.bwrap is not None
        staged: dict[Path, str] = {}
        sources: list[Path] = []
        if user is not None:  # the sandbox user may not traverse to these: root stages them
            sources = ([spec.workspace] if spec.workspace is not None else []) + list(program.binds)
            sources += [m.source for m in spec.mounts if m.source is not None and m.data is None]
        prefix: list[str] = []
        procs = cgroup.procs_files if cgroup is not None else []
        if procs or sources:
            stage = ""
            if sources:
                stage = stage_root([Path(os.path.realpath(s)) for s in sources])
                staged = {src: f"{stage}/{i}" for i, src in enumerate(sources)}
                prefix += [str(self.unshare), "--mount", "--propagation", "private", "--"]
            prefix += [self.sh, "-c", STAGE_SCRIPT, "sh", str(len(procs)), *procs, stage, str(len(sources)),
                       *map(str, sources)]
        if self.prlimit is not None:
            disk = str(self.section.disk_mb << 20)
            prefix += [self.prlimit, f"--fsize={disk}:{disk}"]
            if cgroup is None and memory_mb:
                data = str(memory_mb << 20)
                prefix.append(f"--data={data}:{data}")
                if user is None and not self.root:  # RLIMIT_NPROC counts per real uid, ignored for root
                    nproc = self.section.pids_max
                    prefix.append(f"--nproc={nproc}:{nproc}")
            prefix.append("--")
        if user is not None:
            prefix += drop_to(user, no_new_privs=False)
        if network is not None:  # the netns slirp4netns joins, owned by the sandbox user's userns
            prefix += [str(self.unshare), "--user", "--map-root-user", "--net", "--"]
        data_fd = {dest: fds.data(content) for dest, content in data_files(self.section, spec).items()}
        options = bwrap_options(spec, program, self.section, data_fd, staged, network)
        args_fd = fds.memfd(b"".join(o.encode() + b"\0" for o in options))
        return [*prefix, self.bwrap, "--args", str(args_fd), "--", *program.argv]

    async def _connect_network(self, execution: SandboxExecution, info_r: int, block_w: int,
                               tag: str, user: HostUser | None) -> None:
        """Wait for bwrap's info fd (it has started, so the namespaces exist), attach slirp4netns
        to the run's user+net namespace, wait until the interface is up, then let the command
        start (bwrap blocks on block_w). slirp runs as the sandbox user: it parses the sandbox's
        traffic and never needs root; --enable-sandbox then pivots it into an empty root."""
        assert self.slirp4netns is not None
        json.loads(await self._read_until(info_r, b"}"))  # {"child-pid": …}: bwrap is up
        holder = execution.inner.proc.pid  # bwrap's outer process sits in the unshare'd namespaces
        userns = os.open(f"/proc/{holder}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        netns = os.open(f"/proc/{holder}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        ready_r, ready_w = os.pipe()
        exit_r, execution.slirp_exit_fd = os.pipe()
        fds = [userns, netns, ready_w, exit_r]
        # nsenter --preserve-credentials: slirp enters the user namespace as its owner (uid 0 there,
        # the sandbox user outside), so it may configure the netns and sandbox itself.
        cmd = [str(self.nsenter), "--preserve-credentials", f"--user=/proc/self/fd/{userns}", "--",
               self.slirp4netns, "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
               "--enable-seccomp", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
               "--netns-type=path", f"/proc/self/fd/{netns}", "tap0"]
        as_user: dict[str, object] = {}
        if user is not None:
            as_user = {"user": user.uid, "group": user.gid, "extra_groups": []}
        try:
            execution.slirp = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, env={**SPAWN_ENV, TAG_ENV: tag}, cwd="/",
                pass_fds=tuple(fds), start_new_session=True, **as_user)  # type: ignore[arg-type]
        finally:
            for fd in fds:
                os.close(fd)
        if not await self._read_until(ready_r, b"1", close=True):
            raise ExecutionError("slirp4netns exited before the network was ready")
        execution.info["network"] = "slirp4netns"
        os.write(block_w, b"1")

    @staticmethod
    async def _read_until(fd: int, marker: bytes, close: bool = False) -> bytes:
        """Read a pipe without blocking the loop until ``marker`` or EOF."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(os.dup(fd), "rb", buffering=0))
        try:
            data = b""
            while marker not in data:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            transport.close()
            if close:
                os.close(fd)

    def sandboxes_live(self) -> int:
        return len(self._live)

    async def close(self) -> None:
        """Service shutdown: end every sandbox of this instance, its slirp and its cgroup."""
        for execution in list(self._live):
            if execution.cgroup is not None:
                execution.cgroup.kill()
        signal_tagged(self.tag_prefix + ":", signal.SIGKILL)
        for execution in list(self._live):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(execution.wait(), 5.0)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(sweep, self.tag_prefix)


def _section(settings: Settings) -> SandboxSettings:
    section = settings.section("sandbox")
    return section if isinstance(section, SandboxSettings) else SandboxSettings()


def _build(ctx: BackendContext) -> SandboxExecutor:
    section = ctx.section if isinstance(ctx.section, SandboxSettings) else None
    return SandboxExecutor(ctx.settings, ctx.prefix, ctx.environ.get("PATH") or SYSTEM_PATH, section=section)


PLUGIN = BackendPlugin(name="sandbox", title="sandbox (bubblewrap)", capabilities=frozenset({HOST, ISOLATED}),
                       factory=_build, settings_model=SandboxSettings,
                       description="bubblewrap on this host: read-only system, only the workspace writable, no "
                                   "network unless allowed, an unprivileged user, cgroup limits.")
