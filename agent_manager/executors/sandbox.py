"""The ``sandbox`` backend: the agent runs on this host inside a bubblewrap (``bwrap``) sandbox.

What it is made of, and why (measurements: the isolation notes; user doc: docs/backends-sandbox.md):

* a mount namespace with only read-only system dirs (``/usr`` + merged-usr symlinks, a few
  non-secret ``/etc`` files, a generated passwd/hosts/resolv.conf), a size-bounded private
  ``/tmp``, the workspace at ``/workspace`` (the only writable place) and, read-only at their
  host paths, the dirs holding the agent executable and its interpreter; ``--remount-ro /``;
* all namespaces unshared, ``--disable-userns`` (no nested userns to regain capabilities),
  ``--cap-drop ALL``, ``--new-session`` (no TIOCSTI into the service's terminal);
* an unprivileged uid inside (``settings.sandbox_uid``, no capabilities, no_new_privs). bwrap
  itself runs as the service's user, so that uid maps to the service's host uid: owner checks
  on the service user's files pass — which is why only non-secret paths are bound at all;
* ``--clearenv`` plus an explicit environment, and bwrap started with a minimal environment:
  with ``--unshare-pid``, ``/proc/1/environ`` inside shows *bwrap's* environment;
* ``--die-with-parent`` and a pid namespace: if the service dies, the sandbox dies; bwrap is
  spawned from the event-loop thread, because the parent-death signal follows the thread;
* no network unless ``spec.network`` is True, and then ``slirp4netns --disable-host-loopback``
  (user-mode NAT in the sandbox's own netns, made by ``unshare --net``: see ``_bwrap_argv``):
  egress works, the host's loopback — where this service listens — does not. Else fail closed;
* a per-run cgroup for memory/pids/cpu (``cgroup.py``), or rlimits via ``prlimit`` when
  cgroups are not writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import Availability, Chunk, ExecSpec
from agent_manager.executors.cgroup import RunCgroup, cgroup_name, sweep
from agent_manager.executors.process import (
    TAG_ENV,
    ProcessExecution,
    ctty_prefix,
    descendants,
    new_tag,
    signal_tagged,
)
from agent_manager.settings import Settings

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Visible inside as on the host (on merged-usr systems the last four are symlinks into /usr).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
# Host /etc entries an agent needs (TLS roots, linker cache, tool alternatives); nothing secret.
ETC_ENTRIES = ("/etc/ssl/certs", "/etc/ssl/openssl.cnf", "/etc/ca-certificates", "/etc/alternatives",
               "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/nsswitch.conf",
               "/etc/localtime", "/etc/mime.types")
SLIRP_DNS = "10.0.2.3"
NO_BWRAP = "bubblewrap is not installed: apt-get install bubblewrap"
NO_SLIRP = ("this run needs network access, but the sandbox only provides it through slirp4netns "
            "(apt-get install slirp4netns), which is not installed; the sandbox never shares the host "
            "network. Install it, or turn network off for this agent")
NO_UNSHARE = ("this run needs network access, but unshare (util-linux), which makes the sandbox's network "
              "namespace, is not installed. Install it, or turn network off for this agent")
NO_SLIRP_UNPRIVILEGED = ("network access for sandboxed runs is only supported when the service runs as "
                         "root (slirp4netns cannot join the sandbox's network namespace otherwise); "
                         "the sandbox never shares the host network. Turn network off for this agent")
APPARMOR_HINT = (" — on Ubuntu 23.10+ AppArmor blocks unprivileged user namespaces "
                 "(kernel.apparmor_restrict_unprivileged_userns=1); add an AppArmor profile for bwrap")
SETUP_TIMEOUT_S = 10.0
# bwrap's own environment — pid 1 inside shows it (pitfall 3), so nothing of the service's.
SPAWN_ENV = {"PATH": SYSTEM_PATH}


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _shebang(path: Path) -> list[str]:
    """The interpreter line of a script (``[]`` for binaries or unreadable files)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(256)
    except OSError:
        return []
    return head[2:].split(b"\n", 1)[0].decode(errors="replace").split() if head.startswith(b"#!") else []


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

    def __init__(self, inner: ProcessExecution, cgroup: RunCgroup | None, kill_grace_s: float) -> None:
        self.inner = inner
        self.info = inner.info
        self.cgroup = cgroup
        self.slirp: asyncio.subprocess.Process | None = None
        self.slirp_exit_fd: int | None = None
        self._kill_grace_s = kill_grace_s
        self._cancel_lock = asyncio.Lock()
        self._cleanup = asyncio.create_task(self._cleanup_after_exit())

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
                    await asyncio.wait_for(asyncio.shield(self.inner.proc.wait()), self._kill_grace_s)
            if self.cgroup is not None:
                self.cgroup.kill()
            await self.inner.cancel()
            await asyncio.shield(self._cleanup)

    async def _cleanup_after_exit(self) -> None:
        """Once bwrap is gone: stop slirp, empty and remove the cgroup, note OOM kills."""
        await self.inner.wait()
        await self.stop_network()
        if self.cgroup is not None:
            self.cgroup.kill()
            kills = self.cgroup.oom_kills()
            if kills:
                self.info["oom_kills"] = str(kills)
            await asyncio.to_thread(self.cgroup.remove)

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

    def __init__(self, settings: Settings, tag_prefix: str, host_path: str = SYSTEM_PATH) -> None:
        self.settings = settings
        self.tag_prefix = tag_prefix
        self.bwrap = shutil.which("bwrap", path=SYSTEM_PATH)
        self.slirp4netns = shutil.which("slirp4netns", path=SYSTEM_PATH)
        self.prlimit = shutil.which("prlimit", path=SYSTEM_PATH)
        self.unshare = shutil.which("unshare", path=SYSTEM_PATH)
        self.sh = shutil.which("sh", path=SYSTEM_PATH) or "/bin/sh"
        self.root = os.geteuid() == 0
        self.host_path = host_path  # where agent executables are looked up on the host
        self._availability: Availability | None = None
        self._probe_lock = asyncio.Lock()
        self._live: set[SandboxExecution] = set()
        with contextlib.suppress(OSError):
            sweep(tag_prefix)  # groups a crashed predecessor (same data dir) left behind

    async def available(self) -> Availability:
        """Cached: bwrap present, and a trivial sandbox with the real profile actually runs."""
        if self._availability is not None:
            return self._availability
        async with self._probe_lock:
            if self._availability is None:
                self._availability = await self._probe()
        return self._availability

    async def _probe(self) -> Availability:
        if self.bwrap is None:
            return Availability(False, NO_BWRAP)
        fds = _Fds()
        try:
            argv = self._bwrap_argv(ExecSpec(argv=["/bin/true"]), ["/bin/true"], [], [], fds, network=None)
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
            missing = NO_SLIRP if self.slirp4netns is None else NO_UNSHARE if self.unshare is None else ""
            if missing or not self.root:
                raise ExecutionError(missing or NO_SLIRP_UNPRIVILEGED)
        argv, binds, path_dirs = self._resolve_program(spec)
        if spec.tty is not None:  # an interactive terminal: bwrap's --new-session stays, setsid runs inside it
            argv = [*ctty_prefix(), *argv]
        if spec.workspace is not None:
            await asyncio.to_thread(self._prepare_workspace, spec.workspace, spec.files)
        tag = new_tag(self.tag_prefix)
        memory_mb = spec.resources.memory_mb or self.settings.sandbox_memory_mb
        cgroup = RunCgroup.create(cgroup_name(self.tag_prefix, tag.rsplit(":", 1)[-1]), memory_mb=memory_mb,
                                  pids_max=self.settings.sandbox_pids_max, cpu=spec.resources.cpu)
        fds = _Fds()
        info_r = block_w = -1
        try:
            net_fds = None
            if network:
                info_r, info_w = fds.pipe(parent_reads=True)
                block_w, block_r = fds.pipe(parent_reads=False)
                net_fds = (info_w, block_r)
            full = self._wrapper(cgroup, memory_mb) + self._bwrap_argv(spec, argv, binds, path_dirs, fds,
                                                                        network=net_fds)
            inner = await ProcessExecution.spawn(
                full, env=SPAWN_ENV, cwd="/", stdin=spec.stdin, tag=tag,
                kill_grace_s=self.settings.kill_grace_s,
                stream_close_grace_s=self.settings.stream_close_grace_s,
                info={"sandbox": "bwrap", "cgroup": cgroup.path if cgroup else "", "tag": tag},
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
        execution = SandboxExecution(inner, cgroup, self.settings.kill_grace_s)
        self._live.add(execution)
        execution._cleanup.add_done_callback(lambda _t: self._live.discard(execution))
        if network:
            try:
                await asyncio.wait_for(self._connect_network(execution, info_r, block_w, tag),
                                       SETUP_TIMEOUT_S)
            except (TimeoutError, OSError, ValueError, ExecutionError) as exc:
                await execution.cancel()
                raise ExecutionError(f"could not set up the sandbox network: {exc}") from exc
            finally:
                for fd in (info_r, block_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
        return execution

    async def _connect_network(self, execution: SandboxExecution, info_r: int, block_w: int,
                               tag: str) -> None:
        """Read the sandbox's pid from bwrap's info fd, attach slirp4netns to its netns, wait
        until the interface is up, then let the command start (bwrap blocks on block_w)."""
        assert self.slirp4netns is not None
        pid = int(json.loads(await self._read_until(info_r, b"}"))["child-pid"])
        # slirp (as root) enters the netns directly; --enable-sandbox then drops every capability
        # but CAP_NET_BIND_SERVICE and pivots into an empty root. The exit fd ends it with us.
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        ready_r, ready_w = os.pipe()
        exit_r, execution.slirp_exit_fd = os.pipe()
        fds = [netns, ready_w, exit_r]
        cmd = [self.slirp4netns, "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
               f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", "--netns-type=path", f"/proc/self/fd/{netns}", "tap0"]
        try:
            execution.slirp = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, env={**SPAWN_ENV, TAG_ENV: tag}, cwd="/",
                pass_fds=tuple(fds), start_new_session=True)
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

    def _wrapper(self, cgroup: RunCgroup | None, memory_mb: int = 0) -> list[str]:
        """What runs before bwrap, all exec'ing into each other on one pid: join the cgroup
        (race-free: the shell joins, then execs), or else set rlimits."""
        prefix: list[str] = []
        if cgroup is not None:
            files = cgroup.procs_files
            script = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; '
                      'n=$((n-1)); done; exec "$@"')
            prefix = [self.sh, "-c", script, "sh", str(len(files)), *files]
        elif memory_mb and self.prlimit is not None:
            data = str(memory_mb << 20)
            prefix = [self.prlimit, f"--data={data}:{data}"]
            if not self.root:  # RLIMIT_NPROC counts per real uid and is ignored for root
                prefix.append(f"--nproc={self.settings.sandbox_pids_max}:{self.settings.sandbox_pids_max}")
            prefix.append("--")
        return prefix

    def _bwrap_argv(self, spec: ExecSpec, argv: list[str], binds: list[Path], path_dirs: list[str],
                    fds: _Fds, network: tuple[int, int] | None) -> list[str]:
        """With ``network`` (info fd, block fd), ``unshare --net`` execs bwrap in a new netns that bwrap shares,
        so slirp4netns alone sets up lo. Not ``--unshare-net``: bwrap writes the info fd *before* its child adds
        127.0.0.1 to lo, so slirp, started on it, could set lo up first (the kernel then adds 127.0.0.1/8) and
        bwrap's NLM_F_EXCL add failed with EEXIST: "loopback: Failed RTM_NEWADDR" (1 run in ~25). Both halves
        only here, together: ``--share-net`` without the unshare would be the host's network."""
        assert self.bwrap is not None
        uid = str(self.settings.sandbox_uid)
        netns = [] if network is None else [str(self.unshare), "--net", "--"]  # start() checked it
        args = [*netns, self.bwrap, "--ro-bind", "/usr", "/usr"]
        for name in SYSTEM_DIRS[1:]:
            p = Path(name)
            if p.is_symlink():
                args += ["--symlink", os.readlink(p), name]
            elif p.is_dir():
                args += ["--ro-bind", name, name]
        for name in ETC_ENTRIES:
            if os.path.lexists(name):
                args += ["--ro-bind-try", name, name]
        etc = {"/etc/passwd": (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                               f"sandbox:x:{uid}:{uid}:sandbox:/workspace:/bin/sh\n"),
               "/etc/group": f"root:x:0:\nsandbox:x:{uid}:\n",
               "/etc/hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
               "/etc/hostname": "sandbox\n", "/etc/resolv.conf": f"nameserver {SLIRP_DNS}\n"}
        for dest, content in etc.items():
            args += ["--ro-bind-data", str(fds.data(content)), dest]
        args += ["--dev", "/dev", "--proc", "/proc",
                 "--size", str(self.settings.sandbox_tmp_mb << 20), "--tmpfs", "/tmp"]
        args += (["--bind", str(spec.workspace), "/workspace"] if spec.workspace is not None
                 else ["--size", str(self.settings.sandbox_tmp_mb << 20), "--tmpfs", "/workspace"])
        for bind in binds:
            args += ["--ro-bind", str(bind), str(bind)]
        args += self._mount_args(spec, fds)
        env = {"PATH": SANDBOX_PATH, "HOME": "/workspace", "LANG": "C.UTF-8", **spec.env}
        if path_dirs:
            env["PATH"] = ":".join([*path_dirs, env["PATH"]])
        args += ["--chdir", self._inside_cwd(spec), "--clearenv"]
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--cap-drop", "ALL", "--uid", uid, "--gid", uid, "--hostname", "sandbox"]
        if network is not None:
            args += ["--share-net", "--info-fd", str(network[0]), "--block-fd", str(network[1])]
        return [*args, "--remount-ro", "/", "--", *argv]

    @staticmethod
    def _mount_args(spec: ExecSpec, fds: _Fds) -> list[str]:
        """``spec.mounts`` (workspaces: a worktree's git dir), after /workspace so they may cover a
        path inside it, e.g. its ``.git`` file."""
        args: list[str] = []
        for mount in spec.mounts:
            if mount.data is not None:
                args += ["--ro-bind-data", str(fds.data(mount.data)), mount.target]
            elif mount.source is not None:
                args += ["--bind" if mount.writable else "--ro-bind", str(mount.source), mount.target]
        return args

    @staticmethod
    def _inside_cwd(spec: ExecSpec) -> str:
        """``spec.cwd`` as seen inside: host paths below the workspace map to /workspace."""
        if not spec.cwd:
            return "/workspace"
        cwd = Path(spec.cwd)
        if not cwd.is_absolute():
            return str(Path("/workspace") / cwd)
        if spec.workspace is not None:
            with contextlib.suppress(ValueError):
                return str(Path("/workspace") / cwd.resolve().relative_to(spec.workspace.resolve()))
        return spec.cwd

    def _prepare_workspace(self, workspace: Path, files: dict[str, bytes]) -> None:
        """Write the input files before the sandbox sees the directory."""
        workspace.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            target = workspace / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def _resolve_program(self, spec: ExecSpec) -> tuple[list[str], list[Path], list[str]]:
        """Resolve argv[0] on the host, and decide which host dirs must be bound (read-only,
        at the same path) so that it and its interpreter exist inside. Returns the argv, the
        bind sources and dirs to prepend to PATH inside."""
        if not spec.argv:
            raise ExecutionError("empty command")
        name = spec.argv[0]
        host_path = spec.env.get("PATH") or self.host_path
        if os.sep not in name:
            found = shutil.which(name, path=host_path)
        elif os.path.isabs(name):
            found = name if os.path.isfile(name) and os.access(name, os.X_OK) else None
        else:  # relative to the working directory inside the sandbox: nothing to bind
            return list(spec.argv), [], []
        if found is None:
            raise ExecutionError(f"executable not found: {name}", {"argv0": name})
        protected = [self.settings.home.resolve()]
        if spec.workspace is not None:
            protected.append(spec.workspace.resolve())
        binds: list[Path] = []
        path_dirs: list[str] = []
        exe = Path(found)
        self._expose(exe, binds, protected)
        if not self._visible(exe, []):
            path_dirs.append(str(exe.parent))
        words = _shebang(Path(os.path.realpath(exe)))
        if words:
            interp = words[0]
            if os.path.basename(interp) == "env":
                self._expose(Path(interp), binds, protected)
                rest = [w for w in words[1:] if not w.startswith("-")]
                if rest and "=" not in rest[0]:
                    inside_path = ":".join([*path_dirs, SANDBOX_PATH])
                    target = shutil.which(rest[0], path=inside_path)
                    if target is None:
                        target = shutil.which(rest[0], path=host_path)
                        if target is None:
                            raise ExecutionError(f"interpreter {rest[0]} for {name} not found")
                        path_dirs.append(str(Path(target).parent))
                    self._expose(Path(target), binds, protected)
            else:
                self._expose(Path(interp), binds, protected)
        return [str(exe), *spec.argv[1:]], self._dedupe(binds), path_dirs

    @staticmethod
    def _visible(path: Path, binds: list[Path]) -> bool:
        roots = [Path(d) for d in SYSTEM_DIRS] + binds
        return any(_within(path, root) for root in roots)

    def _expose(self, path: Path, binds: list[Path], protected: list[Path]) -> None:
        """Make ``path`` and its symlink target visible, binding a small enough root for each."""
        for p in (path, Path(os.path.realpath(path))):
            if not self._visible(p, binds):
                binds.append(self._bind_root(p, protected))

    @staticmethod
    def _bind_root(file: Path, protected: list[Path]) -> Path:
        """The install prefix for ``…/bin/x`` (so ``lib/`` comes along), else the file's dir,
        else the file — never a dir holding the service's data dir or the workspace, and
        never a top-level dir like /root or /tmp."""
        parent = file.parent
        candidates = [parent.parent, parent] if parent.name == "bin" else [parent]
        for candidate in candidates:
            if len(candidate.parts) >= 3 and not any(_within(p, candidate) for p in protected):
                return candidate
        return file

    @staticmethod
    def _dedupe(binds: list[Path]) -> list[Path]:
        kept: list[Path] = []
        for bind in sorted(set(binds), key=lambda p: len(p.parts)):
            if not any(_within(bind, k) for k in kept):
                kept.append(bind)
        return kept

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
