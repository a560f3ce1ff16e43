"""A terminal on this host: a PTY whose slave side is given to a local or sandboxed process.

Why through the executors: the process is started by ``LocalExecutor.start`` or
``SandboxExecutor.start`` with ``ExecSpec.tty`` set, so a terminal gets exactly what a run gets
— the same environment rules, the same bubblewrap profile, cgroup limits, network policy and
tree-killing cancel — and only the stdio differs. This module owns just the master side:
non-blocking reads and writes on the event loop, window size, and the order of teardown
(hang up first, like a closing terminal, then the executor's escalating cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
from typing import Any

from agent_manager.executors.base import ExecSpec, Execution

READ_SIZE = 65536
MAX_SIZE = 1000  # columns/rows; Daytona's daemon refuses more, and so do we everywhere
HANGUP_GRACE_S = 0.5


def clamp_size(cols: int, rows: int) -> tuple[int, int]:
    """A window size every backend accepts (0 or 10,000 from a client become 1 or 1000)."""
    return max(1, min(MAX_SIZE, int(cols))), max(1, min(MAX_SIZE, int(rows)))


def set_size(fd: int, cols: int, rows: int) -> None:
    cols, rows = clamp_size(cols, rows)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return cols, rows


class HostPty:
    """The master side of one PTY plus the execution holding the slave side."""

    def __init__(self, master: int, execution: Execution) -> None:
        self.master = master
        self.execution = execution
        self.info: dict[str, str] = dict(execution.info)
        self._closed = False
        self._close_lock = asyncio.Lock()
        self._waiting: set[asyncio.Future[None]] = set()

    @classmethod
    async def open(cls, executor: Any, spec: ExecSpec, cols: int, rows: int) -> HostPty:
        """Start ``spec`` on ``executor`` (local or sandbox) with a fresh PTY as its terminal."""
        master, slave = os.openpty()  # glibc opens the slave O_NOCTTY: never the service's own tty
        try:
            set_size(master, cols, rows)
            os.set_blocking(master, False)
            spec.tty = slave
            execution = await executor.start(spec)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # only the child holds it now, so its exit reads as EOF here
            spec.tty = None
        return cls(master, execution)

    async def _ready(self, writer: bool) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        add, remove = (loop.add_writer, loop.remove_writer) if writer else (loop.add_reader, loop.remove_reader)
        def wake() -> None:
            if not done.done():
                done.set_result(None)
        add(self.master, wake)
        self._waiting.add(done)
        try:
            await done
        finally:
            self._waiting.discard(done)
            if not self._closed:
                remove(self.master)

    async def read(self) -> bytes:
        """The next bytes the terminal printed; ``b""`` once every process holding it is gone."""
        while not self._closed:
            try:
                return os.read(self.master, READ_SIZE)
            except BlockingIOError:
                await self._ready(writer=False)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):  # Linux: EIO when the slave side is closed
                    return b""
                raise
        return b""

    async def write(self, data: bytes) -> None:
        """Type ``data``; waits (backpressure) while the terminal's input buffer is full."""
        view = memoryview(data)
        while view and not self._closed:
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                await self._ready(writer=True)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    return
                raise

    async def resize(self, cols: int, rows: int) -> None:
        if not self._closed:
            with contextlib.suppress(OSError):
                set_size(self.master, cols, rows)  # the kernel sends SIGWINCH to the foreground job

    async def wait(self) -> int | None:
        return await self.execution.wait()

    async def close(self) -> None:
        """Hang up (closing the master sends SIGHUP to the terminal's session, as closing a
        terminal window does), then end whatever is left: the executor's escalating cancel
        kills the whole tree — tagged escapees, the sandbox and its cgroup included."""
        async with self._close_lock:
            if not self._closed:
                self._closed = True
                loop = asyncio.get_running_loop()
                loop.remove_reader(self.master)  # before the fd number can be reused
                loop.remove_writer(self.master)
                for waiter in self._waiting:
                    if not waiter.done():
                        waiter.set_result(None)
                with contextlib.suppress(OSError):
                    os.close(self.master)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.execution.wait()), HANGUP_GRACE_S)
            await self.execution.cancel()
