"""A terminal in a Daytona sandbox: a PTY session of the toolbox daemon, through the official SDK.

One sandbox per terminal, created like a run's (labels, auto-stop/delete, network, warm pool)
and always deleted when the terminal closes. The SDK's ``create_pty_session`` opens the
daemon's ``create-connect`` WebSocket; its output callback is awaited, so a slow reader here
stops reading the socket. The daemon then drops us as a "slow consumer" (or the network
does), while the PTY session itself lives on; a dropped connection without an exit is
reattached with ``connect_pty_session``. The daemon starts the sandbox user's login shell
(there is no command parameter), so an agent's CLI is started by typing ``exec <argv>`` into it.

A terminal on a project workspace (``spec.portable``) gets the workspace exactly as a Daytona
run does: the branch's bundle uploaded and cloned (``daytona_command.setup_repo``), and, when
the terminal closes, everything changed in it collected as a binary patch and downloaded
(``daytona_command.collect_changes``) before the sandbox is deleted; the terminal manager then
commits it on the branch (``Workspaces.settle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import ExecSpec, PortableRepo
from agent_manager.executors.daytona_api import (
    MAX_UPLOAD_BYTES,
    REQUEST_TIMEOUT_S,
    TRANSFER_TIMEOUT_S,
    load_sdk,
)
from agent_manager.executors.daytona_command import SandboxOwner, collect_changes, setup_repo
from agent_manager.executors.pty import clamp_size

if TYPE_CHECKING:
    from daytona import AsyncSandbox
    from daytona.handle.async_pty_handle import AsyncPtyHandle

    from agent_manager.executors.daytona_loop import DaytonaLoop, Handoff, Outlet

log = logging.getLogger("agent_manager.executors.daytona")
CONNECT_TIMEOUT_S = 20.0  # the SDK itself gives up after 10 s without the "connected" message
RECONNECTS = 3
QUEUE_CHUNKS = 64  # terminal output chunks waiting for the reader (daytona_loop.Handoff)


class TerminalOwner(SandboxOwner, Protocol):
    """What a terminal needs from ``daytona.DaytonaExecutor`` beyond a command's: a sandbox of
    its own, and the set of terminal sandboxes (never swept while open)."""

    terminal_ids: set[str]

    def issue_label(self) -> str: ...

    async def sandbox_for(self, spec: ExecSpec, unique: str) -> tuple[AsyncSandbox, bool]: ...


class DaytonaPty:
    """The PTY session ``session_id`` in ``sandbox``, on the Daytona loop. Its output goes to
    ``outlet``; the service's loop uses it through ``BridgedPty`` (the surface of
    ``executors.pty.HostPty``)."""

    def __init__(self, executor: TerminalOwner, sandbox: AsyncSandbox, session_id: str,
                 outlet: Outlet[bytes]) -> None:
        self.ex, self.sandbox, self.session_id = executor, sandbox, session_id
        self.info: dict[str, str] = {"sandbox_id": sandbox.id}
        self.handle: AsyncPtyHandle | None = None
        self._outlet = outlet
        self._exit: int | None = None
        self._ended = asyncio.Event()
        self._closing = False
        self._released = False
        self._follower: asyncio.Task[None] | None = None
        # A project workspace set up in ``remote_ws`` (collected at close), else None.
        self.repo: PortableRepo | None = None
        self.carry = self.remote_ws = ""

    async def on_data(self, data: bytes) -> None:
        await self._outlet.put(data)  # awaited by the SDK's reader: a full outlet stops it reading

    async def connect(self, create: dict[str, Any] | None) -> None:
        """Open (``create`` = the create arguments) or reattach the PTY session's WebSocket."""
        proc = self.sandbox.process

        def call() -> Any:  # a fresh coroutine per attempt (a 429 is retried)
            if create is not None:
                return proc.create_pty_session(self.session_id, self.on_data, **create)
            return proc.connect_pty_session(self.session_id, self.on_data)
        self.handle = await self.ex.call("open terminal" if create is not None else "reattach terminal",
                                         call, CONNECT_TIMEOUT_S, idempotent=False)
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        """Until the shell exits: when the connection ends without an exit, reattach."""
        try:
            for attempt in range(RECONNECTS + 1):
                assert self.handle is not None
                result = await self.handle.wait()
                if self._closing or result.exit_code is not None:
                    self._exit = result.exit_code
                    return
                log.warning("terminal connection to sandbox %s dropped (%s); reattaching",
                            self.sandbox.id, result.error)
                if attempt == RECONNECTS:
                    return
                try:
                    await self.connect(None)
                except ExecutionError as exc:
                    log.warning("could not reattach the terminal in sandbox %s: %s", self.sandbox.id, exc)
                    return
        finally:
            self._ended.set()
            self._outlet.end()

    async def write(self, data: bytes) -> None:
        if self.handle is None or self._ended.is_set():
            return
        with contextlib.suppress(load_sdk().DaytonaError):  # mid-reconnect: the keystroke is lost, as on a flaky link
            await self.handle.send_input(data)

    async def resize(self, cols: int, rows: int) -> None:
        cols, rows = clamp_size(cols, rows)
        size = load_sdk().PtySize(rows=rows, cols=cols)
        with contextlib.suppress(ExecutionError):
            await self.ex.call("resize terminal", lambda: self.sandbox.process.resize_pty_session(
                self.session_id, size, request_timeout=REQUEST_TIMEOUT_S))

    async def wait(self) -> int | None:
        await self._ended.wait()
        return self._exit

    async def close(self) -> None:
        """Kill the PTY session, disconnect, and delete the sandbox (once, whatever failed before)."""
        self._closing = True
        if self._released:
            return
        self._released = True
        try:
            if not self._ended.is_set():
                with contextlib.suppress(ExecutionError):
                    await self.ex.call("kill terminal", lambda: self.sandbox.process.kill_pty_session(
                        self.session_id, request_timeout=REQUEST_TIMEOUT_S), REQUEST_TIMEOUT_S, idempotent=False)
            if self.handle is not None:
                with contextlib.suppress(Exception):
                    await self.handle.disconnect()
            if self._follower is not None:
                self._follower.cancel()
                await asyncio.gather(self._follower, return_exceptions=True)
            await self._collect()
        finally:
            self._ended.set()
            self._outlet.end()
            try:
                await self.ex.delete(self.sandbox)
            except ExecutionError as exc:
                log.error("could not delete Daytona sandbox %s: %s", self.sandbox.id, exc)
            finally:
                self.ex.terminal_ids.discard(self.sandbox.id)

    async def _collect(self) -> None:
        """The workspace's changes, out of the sandbox before it is deleted. A sandbox that is
        already gone (auto-stopped, deleted by hand) has taken them with it: said in ``info``."""
        if self.repo is None:
            return
        try:
            await asyncio.wait_for(collect_changes(self.ex, self.sandbox, self.repo, self.carry, self.remote_ws),
                                   TRANSFER_TIMEOUT_S + 60)
        except Exception as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.info["changes_lost"] = reason
            log.warning("could not collect the changes of terminal sandbox %s: %s", self.sandbox.id, reason)


async def open_pty(executor: TerminalOwner, spec: ExecSpec, cols: int, rows: int, shell: bool,
                   outlet: Outlet[bytes]) -> DaytonaPty:
    """A sandbox with the workspace uploaded and a PTY session in it. ``shell``: ``spec.argv``
    is just "a shell" (the daemon's own); otherwise it is exec'ed in the session's shell."""
    unique = executor.issue_label()
    sandbox, _ = await executor.sandbox_for(spec, unique)
    pty = DaytonaPty(executor, sandbox, f"agent-manager-{unique}", outlet)
    executor.terminal_ids.add(sandbox.id)
    try:
        work_dir = PurePosixPath(await executor.call("get work dir", sandbox.get_work_dir))
        remote_ws = str(work_dir / "workspace")
        if spec.portable is not None:
            carry = str(work_dir / ".agent-manager")
            await setup_repo(executor, sandbox, spec.portable, carry, remote_ws)
            pty.repo, pty.carry, pty.remote_ws = spec.portable, carry, remote_ws
        else:
            await _upload_workspace(executor, sandbox, spec.workspace, remote_ws)
        cols, rows = clamp_size(cols, rows)
        env = {"TERM": "xterm-256color", **spec.env}
        await pty.connect({"cwd": remote_ws, "envs": env, "pty_size": load_sdk().PtySize(rows=rows, cols=cols)})
        if not shell:
            await pty.write(("exec " + shlex.join(spec.argv) + "\n").encode())
    except BaseException:
        await asyncio.shield(pty.close())
        raise
    return pty


async def _upload_workspace(executor: TerminalOwner, sandbox: AsyncSandbox, workspace: Path | None,
                            remote_ws: str) -> None:
    """The workspace's regular files (never following links out of it), else an empty folder."""
    sdk = load_sdk()
    files: list[Path] = []
    if workspace is not None and workspace.is_dir():
        files = [p for p in sorted(workspace.rglob("*")) if p.is_file() and not p.is_symlink()]
    total = sum(p.stat().st_size for p in files)
    if total > MAX_UPLOAD_BYTES:
        raise ExecutionError(f"workspace too large for Daytona ({total} bytes > {MAX_UPLOAD_BYTES})")
    if not files:
        await executor.call("create workspace", lambda: sandbox.fs.create_folder(remote_ws, "755"))
        return
    assert workspace is not None
    uploads = [sdk.FileUpload(source=str(p), destination=f"{remote_ws}/{p.relative_to(workspace).as_posix()}")
               for p in files]
    await executor.call("upload workspace", lambda: sandbox.fs.upload_files(uploads, timeout=TRANSFER_TIMEOUT_S),
                        TRANSFER_TIMEOUT_S)


class BridgedPty:
    """A ``DaytonaPty`` as the terminal manager on the service's loop uses it: reads come in
    batches through the outlet, every other call runs on the Daytona loop."""

    def __init__(self, bridge: DaytonaLoop, pty: DaytonaPty, outlet: Handoff[bytes]) -> None:
        self._bridge, self._pty = bridge, pty
        self.info = pty.info  # the same dict: written there only before the terminal ends
        self._reads = outlet.batches()
        self._over = False

    async def read(self) -> bytes:
        if self._over:
            return b""
        batch = await anext(self._reads, None)
        if batch is None:
            self._over = True  # every later read sees the end too
            return b""
        return b"".join(batch)

    async def write(self, data: bytes) -> None:
        await self._bridge.run(self._pty.write(data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._bridge.run(self._pty.resize(cols, rows))

    async def wait(self) -> int | None:
        return await self._bridge.run(self._pty.wait())

    async def close(self) -> None:
        with contextlib.suppress(ExecutorUnavailable):  # the executor closed first: it ended everything
            await self._bridge.run(self._pty.close())
