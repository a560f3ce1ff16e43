"""A per-run cgroup: the memory/pids/cpu budget of one sandbox and a handle to end it whole.

Why a cgroup and not only rlimits: rlimits count per process (memory) or per real uid across
*all* of that uid's processes (RLIMIT_NPROC), so they neither bound a whole tree nor keep one
sandbox from starving another; a cgroup does both, and ``cgroup.kill`` ends every member in
one write, whatever sessions or namespaces they moved into.

Two layouts are handled:

* hybrid / v1 (this kind of host): ``memory``, ``pids`` and ``cpu`` are separate v1 hierarchies
  (``memory.limit_in_bytes``, ``pids.max``, ``cpu.cfs_quota_us``); when cgroup2 is mounted
  alongside, a v2 directory is added only for its ``cgroup.kill``.
* pure v2: one directory with ``memory.max``, ``memory.swap.max``, ``pids.max``, ``cpu.max``.
  The parent must delegate the controllers (``cgroup.subtree_control``); when it cannot (the
  "no internal processes" rule on a non-root cgroup), creation fails and the caller falls back.

The child joins the groups itself before exec'ing bwrap (``sh -c 'echo $$ > …/cgroup.procs;
exec …'``), so no process of the run ever runs outside them and no ``preexec_fn`` is needed.
Every directory is created below the service's *own* cgroup, so the service's limits still
bound its runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

T = TypeVar("T")

CGROUP_NAME_PREFIX = "agent-manager-"


# Where the cgroup hierarchies are mounted and where this process sits in them: read once per
# ``HOST_VIEW_TTL_S`` instead of at every run's start (parsing /proc/self/mounts and
# /proc/self/cgroup was a seventh of a run's spawn time), and still noticing a later change.
HOST_VIEW_TTL_S = 10.0
_cached: dict[str, tuple[float, Any]] = {}


def _fresh(name: str, read: Callable[[], T]) -> T:
    now = time.monotonic()
    hit = _cached.get(name)
    if hit is not None and now - hit[0] < HOST_VIEW_TTL_S:
        return cast(T, hit[1])
    value = read()
    _cached[name] = (now, value)
    return value


def _mounts() -> tuple[dict[str, Path], Path | None]:
    return _fresh("mounts", _read_mounts)


def _own_paths() -> tuple[dict[str, str], str | None]:
    return _fresh("own", _read_own_paths)


def _read_mounts() -> tuple[dict[str, Path], Path | None]:
    """v1 controller → mount point, and the cgroup2 mount point (if any)."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        mount, fstype, opts = Path(parts[1]), parts[2], parts[3].split(",")
        if fstype == "cgroup2":
            v2 = v2 or mount
        elif fstype == "cgroup":
            for ctrl in ("memory", "pids", "cpu"):
                if ctrl in opts:
                    v1.setdefault(ctrl, mount)
    return v1, v2


def _read_own_paths() -> tuple[dict[str, str], str | None]:
    """This process's cgroup path per v1 controller, and its v2 path."""
    v1: dict[str, str] = {}
    v2: str | None = None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            v2 = path
        for ctrl in ctrls.split(","):
            v1[ctrl] = path
    return v1, v2


def _under(mount: Path, own: str) -> Path:
    return mount / own.lstrip("/")


@dataclass
class RunCgroup:
    """The directories of one run's cgroup (one per v1 hierarchy, or a single v2 one)."""

    dirs: list[Path]
    kill_dir: Path | None = None
    memory_dir: Path | None = None
    v2: bool = False
    _removed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, name: str, *, memory_mb: int, pids_max: int, cpu: float | None) -> RunCgroup | None:
        """Create and configure the cgroup, or return ``None`` when this host does not allow it."""
        v1_mounts, v2_mount = _mounts()
        own_v1, own_v2 = _own_paths()
        if v2_mount and (v2_mount / "cgroup.controllers").exists():
            available = (v2_mount / "cgroup.controllers").read_text().split()
            if "memory" in available and "pids" in available:
                return cls._create_v2(_under(v2_mount, own_v2 or "/"), name, memory_mb, pids_max, cpu)
        if "memory" not in v1_mounts or "pids" not in v1_mounts:
            return None
        group = cls(dirs=[])
        try:
            mem = group._mkdir(_under(v1_mounts["memory"], own_v1.get("memory", "/")) / name)
            group.memory_dir = mem
            limit = str(memory_mb << 20)
            (mem / "memory.limit_in_bytes").write_text(limit)
            if (mem / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                (mem / "memory.memsw.limit_in_bytes").write_text(limit)
            pids = group._mkdir(_under(v1_mounts["pids"], own_v1.get("pids", "/")) / name)
            (pids / "pids.max").write_text(str(pids_max))
            if cpu and "cpu" in v1_mounts:
                cpu_dir = group._mkdir(_under(v1_mounts["cpu"], own_v1.get("cpu", "/")) / name)
                (cpu_dir / "cpu.cfs_period_us").write_text("100000")
                (cpu_dir / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpu * 100000))))
            if v2_mount is not None:  # hybrid: a controller-less v2 group, for cgroup.kill only
                with contextlib.suppress(OSError):
                    group.kill_dir = group._mkdir(_under(v2_mount, own_v2 or "/") / name)
        except OSError:
            group.remove()
            return None
        return group

    @classmethod
    def create_tracking(cls, name: str) -> RunCgroup | None:
        """A group with no limits, only to hold a local run's tree together and end it whole:
        a v2 directory (``cgroup.kill``) when cgroup2 is mounted, else the v1 ``pids``
        hierarchy. ``None`` when neither is writable (service not root, read-only cgroupfs)."""
        v1_mounts, v2_mount = _mounts()
        own_v1, own_v2 = _own_paths()
        group = cls(dirs=[])
        try:
            if v2_mount is not None:
                group.kill_dir = group._mkdir(_under(v2_mount, own_v2 or "/") / name)
            elif "pids" in v1_mounts:
                group._mkdir(_under(v1_mounts["pids"], own_v1.get("pids", "/")) / name)
            else:
                return None
        except OSError:
            group.remove()
            return None
        return group

    def join_argv(self, sh: str) -> list[str]:
        """An argv prefix whose shell joins every directory of this group, then execs the
        rest: no process of the run ever runs outside it, and no ``preexec_fn`` is needed."""
        files = self.procs_files
        script = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; '
                  'n=$((n-1)); done; exec "$@"')
        return [sh, "-c", script, "sh", str(len(files)), *files]

    @classmethod
    def _create_v2(cls, parent: Path, name: str, memory_mb: int, pids_max: int,
                   cpu: float | None) -> RunCgroup | None:
        group = cls(dirs=[], v2=True)
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            wanted = [c for c in ("memory", "pids", "cpu") if c not in enabled]
            if wanted:
                (parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
            path = group._mkdir(parent / name)
            group.kill_dir = group.memory_dir = path
            (path / "memory.max").write_text(str(memory_mb << 20))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
            (path / "pids.max").write_text(str(pids_max))
            if cpu:
                with contextlib.suppress(OSError):
                    (path / "cpu.max").write_text(f"{max(1000, int(cpu * 100000))} 100000")
        except OSError:
            group.remove()
            return None
        return group

    def _mkdir(self, path: Path) -> Path:
        path.mkdir()
        self.dirs.append(path)
        return path

    @property
    def procs_files(self) -> list[str]:
        """The files the child writes its pid into (every hierarchy, so it is in all of them)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    @property
    def path(self) -> str:
        """One path worth showing on the run (the memory group, which is where OOM shows)."""
        return str(self.memory_dir or (self.dirs[0] if self.dirs else ""))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def kill(self) -> None:
        """SIGKILL every member: ``cgroup.kill`` when there is one, else each listed pid (twice,
        to catch a fork that raced the first pass)."""
        if self.kill_dir is not None and (self.kill_dir / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.kill_dir / "cgroup.kill").write_text("1")
        for _ in range(2):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this group (0 when unknown)."""
        if self.memory_dir is None:
            return 0
        name = "memory.events" if self.v2 else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (self.memory_dir / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def remove(self, wait_s: float = 1.0) -> None:
        """Kill what is left and delete the directories (a cgroup with members cannot be removed)."""
        if self._removed:
            return
        deadline = time.monotonic() + wait_s
        pending = list(reversed(self.dirs))
        while pending:
            if self.pids():
                self.kill()
            for d in list(pending):
                try:
                    d.rmdir()
                    pending.remove(d)
                except FileNotFoundError:
                    pending.remove(d)
                except OSError:
                    pass
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self._removed = not pending


def cgroup_name(tag_prefix: str, run_id: str) -> str:
    """``agent-manager-<prefix>-<run>``: the prefix lets one instance sweep only its own groups."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag_prefix)
    return f"{CGROUP_NAME_PREFIX}{safe}-{run_id}"


def sweep(tag_prefix: str) -> int:
    """Remove the groups a crashed predecessor of this instance left behind (killing any
    member still in them); returns how many directories were removed."""
    start = cgroup_name(tag_prefix, "")
    v1_mounts, v2_mount = _mounts()
    own_v1, own_v2 = _own_paths()
    parents = [_under(mount, own_v1.get(ctrl, "/")) for ctrl, mount in v1_mounts.items()]
    if v2_mount is not None:
        parents.append(_under(v2_mount, own_v2 or "/"))
    stale = []
    for parent in parents:
        with contextlib.suppress(OSError):
            stale += [p for p in parent.iterdir() if p.is_dir() and p.name.startswith(start)]
    if not stale:
        return 0
    group = RunCgroup(dirs=stale)
    group.remove(wait_s=0.5)
    return sum(1 for p in stale if not p.exists())
