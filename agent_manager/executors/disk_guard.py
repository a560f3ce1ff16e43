"""A per-run cap on what a sandboxed run may add to its workspace (``sandbox_disk_mb``).

Why two mechanisms: a size-capped filesystem per workspace needs root (a loop image) or RAM
(tmpfs) and breaks the persistent, host-visible workspace the other backends and the files
API share. What works the same as root and not as root is:

* ``RLIMIT_FSIZE`` = the cap, set on the launch chain (``prlimit``): no single file a run
  writes can grow past it — exact, enforced by the kernel (``EFBIG``);
* this guard: it measures the workspace's allocated blocks before the run, then every
  ``interval`` seconds, and ends the run (its whole cgroup) once it has added more than the
  cap. Precision: the overshoot is at most what the run writes in one interval plus one
  walk (measured in the closing note), and the walk costs O(files in the workspace).

A walk alone misses files a run deleted but keeps open (create, unlink, write on through the
fd): each stays under RLIMIT_FSIZE, yet together they fill the disk while the workspace looks
empty. So the guard also adds the deleted regular files on the workspace's filesystem that the
run's processes hold open (``/proc/<pid>/fd``), each inode once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

INTERVAL_S = 0.2
ENTRY_BYTES = 4096  # what an entry counts at least (an inode, one block)


def usage_bytes(path: Path) -> int:
    """Allocated bytes (``st_blocks``) under ``path``, never following a symlink; sparse files
    count what they really occupy. Every entry counts at least ``ENTRY_BYTES``: empty files and
    symlinks take inodes, not blocks, and millions of them would exhaust the filesystem unseen."""
    total = 0
    with contextlib.suppress(OSError):
        total += os.lstat(path).st_blocks * 512
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                total += max(ENTRY_BYTES, os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_blocks * 512)
    return total


def held_deleted_bytes(pids: list[int], device: int) -> int:
    """Allocated bytes of deleted regular files on ``device`` that ``pids`` hold open."""
    total = 0
    seen: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                info = os.stat(f"/proc/{pid}/fd/{fd}")  # the open file itself, deleted or not
                if (info.st_nlink == 0 and info.st_dev == device and stat.S_ISREG(info.st_mode)
                        and info.st_ino not in seen):
                    seen.add(info.st_ino)
                    total += info.st_blocks * 512
    return total


class DiskGuard:
    """Watches one workspace while a run lives; calls ``on_exceeded`` once if it overflows."""

    def __init__(self, path: Path, limit_bytes: int, on_exceeded: Callable[[int], Awaitable[None]],
                 interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self.interval_s = interval_s
        self.on_exceeded = on_exceeded
        self.baseline = usage_bytes(path)
        self.device = os.stat(path).st_dev
        self.pids: Callable[[], list[int]] = list  # the run's processes, set once they exist
        self.exceeded = False
        self._task: asyncio.Task[None] | None = None

    def measure(self) -> int:
        return usage_bytes(self.path) + held_deleted_bytes(self.pids(), self.device)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            added = await asyncio.to_thread(self.measure) - self.baseline
            if added > self.limit_bytes:
                self.exceeded = True
                await self.on_exceeded(added)
                return
