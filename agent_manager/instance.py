"""The one running service of a data directory: its lock and where it listens.

Two services on one data directory would fight: the second one's start-up sweep kills the
first one's runs, and both write the same database. So a service holds an exclusive
``flock`` on ``<home>/service.lock`` (holding its pid, for the message the next one prints)
for as long as it runs; the kernel drops the lock when the process dies, however it dies.

While it listens, the service records its URL in ``<home>/service.json`` (mode 0600), so
client commands find a service started with ``--port 0`` or ``--port 18765`` without flags.
The file only counts while the lock is held: a stale one from a killed service is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from agent_manager.errors import ConfigError

LOCK_FILE = "service.lock"
ENDPOINT_FILE = "service.json"


class DataDirLock:
    """An exclusive lock on a data directory, held until ``release`` or process exit."""

    def __init__(self, home: Path, fd: int) -> None:
        self.home = home
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, home: Path) -> DataDirLock:
        """Take the lock or raise ``ConfigError`` naming the process that holds it."""
        home.mkdir(parents=True, exist_ok=True)
        path = home / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"another Agent Manager service (pid {holder}) is already using the data directory {home}. "
                "Stop it first, or give this one its own data directory (agent-manager --home DIR serve)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(home, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.home / ENDPOINT_FILE).unlink(missing_ok=True)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


def held(home: Path) -> bool:
    """Is a live service holding ``home``'s lock right now?"""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def write_endpoint(home: Path, url: str) -> None:
    """Record the URL the service listens on (0600, atomically)."""
    path = home / ENDPOINT_FILE
    tmp = path.with_name(ENDPOINT_FILE + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "pid": os.getpid()}, fh)
    os.replace(tmp, path)


def read_endpoint(home: Path) -> str | None:
    """The URL of the service running on ``home``, or None when none is."""
    try:
        data = json.loads((home / ENDPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not held(home):
        return None
    return url
