"""What a sandbox looks like from inside: the bwrap options, and which host paths it needs.

Kept apart from ``sandbox.py`` (which starts, networks and ends sandboxes) because this part is
pure: given a spec and a few host facts it returns argv lists, so it can be read and tested
without running anything.

Two rules shape it:

* **no secret on any command line.** Every option (environment included) goes to bwrap through
  ``--args FD`` — a memfd the service fills — so ``ps`` and ``/proc/<pid>/cmdline`` of every
  process of a run show only ``bwrap --args N -- <program> <args>``;
* **staged host paths.** When the service is root, the sandbox runs as an unprivileged host user
  who may not be able to traverse to the workspace or the agent's install dir (``/root/...``,
  a 0700 data dir). The root half of the launch chain bind-mounts each of them in a private
  mount namespace under a fresh tmpfs (``stage_root``), and bwrap binds them from there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.sandbox_settings import SandboxSettings
from agent_manager.settings import Settings

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Visible inside as on the host (on merged-usr systems the last four are symlinks into /usr).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
# Host /etc entries an agent needs (TLS roots, linker cache, tool alternatives); nothing secret.
ETC_ENTRIES = ("/etc/ssl/certs", "/etc/ssl/openssl.cnf", "/etc/ca-certificates", "/etc/alternatives",
               "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/nsswitch.conf",
               "/etc/localtime", "/etc/mime.types")
# Kernel knobs a fresh /proc still exposes; bound read-only over it (the uid drop is the first wall).
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
SLIRP_DNS = "10.0.2.3"
# Candidate mount points for the staging tmpfs (in the run's private mount namespace only).
STAGE_CANDIDATES = ("/run", "/mnt", "/media", "/srv", "/var/tmp", "/tmp")

# Run by root in the run's own mount namespace: join the cgroups, stage the host paths the
# sandbox user cannot reach, then exec the rest of the chain (which drops to that user).
STAGE_SCRIPT = """
n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done
stage=$1; n=$2; shift 2
if [ "$n" -gt 0 ]; then mount -t tmpfs -o mode=0755,size=65536 agent-manager-stage "$stage" || exit 125; fi
i=0
while [ "$i" -lt "$n" ]; do
  if [ -d "$1" ]; then mkdir "$stage/$i"; else : > "$stage/$i"; fi || exit 125
  mount --bind "$1" "$stage/$i" || exit 125
  shift; i=$((i+1))
done
exec "$@"
"""


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


def stage_root(sources: list[Path]) -> str:
    """A directory to mount the staging tmpfs on that hides none of ``sources``."""
    for candidate in STAGE_CANDIDATES:
        path = Path(candidate)
        if path.is_dir() and not path.is_symlink() and not any(_within(s, path) for s in sources):
            return candidate
    raise ExecutionError("no directory to stage the sandbox's host paths on (tried "
                         + ", ".join(STAGE_CANDIDATES) + ")")


@dataclass
class Program:
    """The resolved command: argv, host dirs it needs (bound read-only at the same path) and
    dirs to put first on PATH inside."""

    argv: list[str]
    binds: list[Path] = field(default_factory=list)
    path_dirs: list[str] = field(default_factory=list)


def resolve_program(spec: ExecSpec, host_path: str, settings: Settings) -> Program:
    """Resolve argv[0] on the host, and decide which host dirs must be bound so that it and its
    interpreter exist inside."""
    if not spec.argv:
        raise ExecutionError("empty command")
    name = spec.argv[0]
    host_path = spec.env.get("PATH") or host_path
    if os.sep not in name:
        found = shutil.which(name, path=host_path)
    elif os.path.isabs(name):
        found = name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    else:  # relative to the working directory inside the sandbox: nothing to bind
        return Program(list(spec.argv))
    if found is None:
        raise ExecutionError(f"executable not found: {name}", {"argv0": name})
    protected = [settings.home.resolve()]
    if spec.workspace is not None:
        protected.append(spec.workspace.resolve())
    binds: list[Path] = []
    path_dirs: list[str] = []
    exe = Path(found)
    _expose(exe, binds, protected)
    if not _visible(exe, []):
        path_dirs.append(str(exe.parent))
    words = _shebang(Path(os.path.realpath(exe)))
    if words:
        interp = words[0]
        if os.path.basename(interp) == "env":
            _expose(Path(interp), binds, protected)
            rest = [w for w in words[1:] if not w.startswith("-")]
            if rest and "=" not in rest[0]:
                inside_path = ":".join([*path_dirs, SANDBOX_PATH])
                target = shutil.which(rest[0], path=inside_path)
                if target is None:
                    target = shutil.which(rest[0], path=host_path)
                    if target is None:
                        raise ExecutionError(f"interpreter {rest[0]} for {name} not found")
                    path_dirs.append(str(Path(target).parent))
                _expose(Path(target), binds, protected)
        else:
            _expose(Path(interp), binds, protected)
    return Program([str(exe), *spec.argv[1:]], _dedupe(binds), path_dirs)


def _visible(path: Path, binds: list[Path]) -> bool:
    roots = [Path(d) for d in SYSTEM_DIRS] + binds
    return any(_within(path, root) for root in roots)


def _expose(path: Path, binds: list[Path], protected: list[Path]) -> None:
    """Make ``path`` and its symlink target visible, binding a small enough root for each."""
    for p in (path, Path(os.path.realpath(path))):
        if not _visible(p, binds):
            binds.append(_bind_root(p, protected))


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


def _dedupe(binds: list[Path]) -> list[Path]:
    kept: list[Path] = []
    for bind in sorted(set(binds), key=lambda p: len(p.parts)):
        if not any(_within(bind, k) for k in kept):
            kept.append(bind)
    return kept


def inside_cwd(spec: ExecSpec) -> str:
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


def bwrap_options(spec: ExecSpec, program: Program, section: SandboxSettings, data_fd: dict[str, int],
                  sources: dict[Path, str], network: tuple[int, int] | None) -> list[str]:
    """Every bwrap option (they go through ``--args``, never argv). ``data_fd`` maps generated
    /etc files to fds holding their content; ``sources`` maps host paths to where the launch
    chain staged them (identity when nothing is staged); ``network`` is (info fd, block fd)
    when the sandbox shares the netns made for slirp4netns just before it."""
    uid = str(section.uid)
    args = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_DIRS[1:]:
        p = Path(name)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), name]
        elif p.is_dir():
            args += ["--ro-bind", name, name]
    for name in ETC_ENTRIES:
        if os.path.lexists(name):
            args += ["--ro-bind-try", name, name]
    for dest, fd in data_fd.items():
        if dest.startswith("/"):
            args += ["--ro-bind-data", str(fd), dest]
    args += ["--dev", "/dev", "--proc", "/proc"]
    for name in PROC_READ_ONLY:
        args += ["--ro-bind-try", name, name]
    args += ["--size", str(section.tmp_mb << 20), "--tmpfs", "/tmp"]
    # bwrap's /dev is a tmpfs of unbounded size that the sandbox user owns: written to, it is host
    # memory that no rlimit counts (the service not root = no memory cgroup). /dev/shm gets its own
    # bounded tmpfs and the rest of /dev is read-only (device nodes and /dev/pts still work).
    args += ["--size", str(section.tmp_mb << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if spec.workspace is not None:
        args += ["--bind", sources.get(spec.workspace, str(spec.workspace)), "/workspace"]
    else:
        args += ["--size", str(section.tmp_mb << 20), "--tmpfs", "/workspace"]
    for bind in program.binds:
        args += ["--ro-bind", sources.get(bind, str(bind)), str(bind)]
    # spec.mounts (workspaces: a worktree's git dir), after /workspace so they may cover a path
    # inside it, e.g. its .git file.
    for mount in spec.mounts:
        if mount.data is not None:
            args += ["--ro-bind-data", str(data_fd[mount_key(mount.target)]), mount.target]
        elif mount.source is not None:
            args += ["--bind" if mount.writable else "--ro-bind",
                     sources.get(mount.source, str(mount.source)), mount.target]
    env = {"PATH": SANDBOX_PATH, "HOME": "/workspace", "LANG": "C.UTF-8", **spec.env}
    if program.path_dirs:
        env["PATH"] = ":".join([*program.path_dirs, env["PATH"]])
    args += ["--chdir", inside_cwd(spec), "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL", "--uid", uid, "--gid", uid, "--hostname", "sandbox"]
    if network is not None:
        args += ["--share-net", "--info-fd", str(network[0]), "--block-fd", str(network[1])]
    return [*args, "--remount-ro", "/"]


def mount_key(target: str) -> str:
    """The ``data_fd`` key of a data mount (kept apart from the generated /etc files)."""
    return "mount:" + target


def data_files(section: SandboxSettings, spec: ExecSpec) -> dict[str, str]:
    """Every file bwrap makes from data: the /etc files, then the spec's data mounts."""
    files = etc_files(section)
    for mount in spec.mounts:
        if mount.data is not None:
            files[mount_key(mount.target)] = mount.data
    return files


def etc_files(section: SandboxSettings) -> dict[str, str]:
    """The generated /etc files: the sandbox's own passwd/group/hosts, slirp's resolver."""
    uid = str(section.uid)
    return {"/etc/passwd": (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                            f"sandbox:x:{uid}:{uid}:sandbox:/workspace:/bin/sh\n"),
            "/etc/group": f"root:x:0:\nsandbox:x:{uid}:\n",
            "/etc/hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
            "/etc/hostname": "sandbox\n", "/etc/resolv.conf": f"nameserver {SLIRP_DNS}\n"}
