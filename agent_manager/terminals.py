"""Interactive terminals (DESIGN 3.8): a PTY on any backend, under the same rules as runs.

A terminal is routed like a run (``executors.routing``: untrusted users always isolated),
takes a host slot like a run when it runs on this host, and is owned by the user who opened
it. Its process lives in the service, not in a browser tab: the WebSocket only *attaches* to
it. While nobody is attached the output goes on into a bounded scroll-back, and after
``terminal_idle_timeout_s`` without a client the terminal is closed. A new attachment gets
the scroll-back first, then the live bytes, and takes over from any earlier one.

Backpressure: bytes flow PTY → scroll-back → the attached client's small queue → WebSocket.
When the client does not read, the queue fills, the pump stops reading the PTY, the kernel's
PTY buffer fills and the program writing blocks — exactly what a terminal nobody reads does.
Server memory stays bounded by the queue and the scroll-back, whatever the program prints.

Closing (DELETE, idle timeout, service shutdown) hangs up the PTY and then ends the whole
tree through the backend (cgroup, sandbox, Daytona PTY session and sandbox). Nothing of a
terminal is kept in the database: after a crash the next start kills every tagged process
and sweeps the instance's Daytona sandboxes, as for runs. Optionally every byte in and out
is recorded (``terminal_record``) as an asciicast v2 file referenced from the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent_manager import plugins
from agent_manager.errors import BadRequest, ExecutionError, NotFound, TooManyRequests
from agent_manager.executors.base import ExecSpec, Executor
from agent_manager.executors.pty import clamp_size
from agent_manager.executors.routing import Route, RouteRequest, route
from agent_manager.plugins import ISOLATED, REMOTE, on_host, workspace_access
from agent_manager.runs import RunManager
from agent_manager.settings import Settings
from agent_manager.store.database import new_id, now
from agent_manager.workdirs import hand_over, service_owned

log = logging.getLogger("agent_manager.terminals")
CLIENT_QUEUE_CHUNKS = 16  # ≤ 16 × 64 KiB in flight to one client
SHELLS = ("bash", "sh")
TERMINAL_ENV = {"TERM": "xterm-256color", "COLORTERM": "truecolor"}
# An empty HISTFILE: bash keeps the session's history in memory but never writes it to a file.
# In a sandbox HOME is the workspace, so ~/.bash_history — every command typed, secrets included
# — would otherwise be committed on the workspace's branch and merged into the user's repository.
SHELL_ENV = {"HISTFILE": ""}


class Pty(Protocol):
    """What a backend's terminal offers (``executors.pty.HostPty``, ``executors.daytona_pty.DaytonaPty``)."""

    info: dict[str, str]

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def resize(self, cols: int, rows: int) -> None: ...
    async def wait(self) -> int | None: ...
    async def close(self) -> None: ...


@dataclass
class TerminalRequest:
    owner: str | None
    user_trusted: bool = True
    user_admin: bool = True  # only the admin's terminals may be the service's own OS user
    agent: dict[str, Any] | None = None
    backend: str | None = None
    run_backend: str | None = None  # the backend of the run whose workspace this is
    workspace: Path | None = None
    scratch: bool = False  # ``workspace`` is the terminal's own, removed when it closes
    cols: int = 80
    rows: int = 24
    actor: str = "admin"
    terminal_id: str = field(default_factory=lambda: new_id("term"))
    # A project workspace (a run's, or one made for this terminal): prepared for the backend as
    # for a run (sandbox: private git dir; Daytona: bundle in) and committed when the terminal closes.
    workspace_id: str | None = None


class Client:
    """One attached WebSocket: a small queue the pump fills and the socket drains."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=CLIENT_QUEUE_CHUNKS)
        self.reason = ""  # why it was ended from our side ("replaced", "closed")

    def end(self, reason: str) -> None:
        """Unblock a pump waiting on this queue, then tell the socket to stop."""
        self.reason = self.reason or reason
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Recorder:
    """asciicast v2: a JSON header, then ``[seconds, "o"|"i"|"r", data]`` lines. Bytes that are
    not UTF-8 are kept as lone surrogates (``surrogateescape``), so the exact bytes come back."""

    def __init__(self, path: Path, cols: int, rows: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.file = os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass")
        self.path, self.start = path, time.monotonic()
        self.file.write(json.dumps({"version": 2, "width": cols, "height": rows, "timestamp": int(time.time()),
                                    "env": {"TERM": TERMINAL_ENV["TERM"]}}) + "\n")

    def add(self, kind: str, data: bytes | str) -> None:
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
        self.file.write(json.dumps([round(time.monotonic() - self.start, 6), kind, text]) + "\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


@dataclass
class Terminal:
    id: str
    owner: str | None
    backend: str
    route_reason: str
    command: str
    cols: int
    rows: int
    pty: Pty
    created_at: str = field(default_factory=now)
    scrollback: bytearray = field(default_factory=bytearray)
    client: Client | None = None
    exit_code: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    recorder: Recorder | None = None
    workspace: Path | None = None
    scratch: bool = False
    actor: str = "admin"
    workspace_id: str | None = None
    release_slot: bool = False
    idle_timer: asyncio.TimerHandle | None = None
    pump: asyncio.Task[None] | None = None
    closing: asyncio.Task[None] | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "backend": self.backend, "route_reason": self.route_reason, "command": self.command,
                "cols": self.cols, "rows": self.rows, "created_at": self.created_at,
                "attached": self.client is not None, "sandbox_id": self.pty.info.get("sandbox_id"),
                "recorded": self.recorder is not None}


class TerminalManager:
    def __init__(self, settings: Settings, executors: dict[str, Executor], runs: RunManager) -> None:
        self.settings, self.executors, self.runs = settings, executors, runs
        self.terminals: dict[str, Terminal] = {}
        self.on_close: list[Any] = []  # callbacks (terminal, reason): the audit log
        self.workspaces: Any = None  # workspaces.Workspaces, set by the service when projects exist
        self._opening = 0

    # -- opening -------------------------------------------------------------------------------

    async def open(self, req: TerminalRequest) -> Terminal:
        if len(self.terminals) + self._opening >= self.settings.terminal_max:
            raise TooManyRequests(f"{self.settings.terminal_max} terminals are open (terminal_max); close one first")
        agent = req.agent or {}
        backend = req.backend
        if backend is None and req.run_backend and (
                req.user_trusted or ISOLATED in plugins.capabilities(req.run_backend)):
            backend = req.run_backend  # the run's own backend, unless that would put an untrusted user on the host
        # A terminal is a shell: a non-admin user's gets a run's rules (runs.py) — as run_as_user,
        # or isolated — never the service's own OS user, which can read the admin token.
        user, problem = (None, "") if req.user_admin or req.workspace is None else self.runs.run_as_user(req.workspace)
        if user is not None and req.workspace_id:
            user, problem = None, "its project workspace lives in the data directory, out of that user's reach"
        chosen = await route(RouteRequest(
            run_backend=backend, agent_backend=agent.get("backend"), agent_trusted=bool(agent.get("trusted", True)),
            user_trusted=req.user_trusted, user_admin=req.user_admin, run_as=user.name if user else None,
            run_as_problem=problem,
            host_saturated=self.runs.host_running >= self.settings.max_concurrent_runs), self.settings, self.executors)
        chosen = Route(chosen.backend, chosen.reason.replace("requested by the run", "requested for this terminal"),
                       chosen.run_as)
        host = on_host(chosen.backend)
        if host:
            busy = TooManyRequests(f"all {self.settings.max_concurrent_runs} run slots of this host are busy "
                                   "(max_concurrent_runs); terminals count against them")
            if self.runs.host_slots.used >= self.settings.max_concurrent_runs:
                raise busy
            try:  # a terminal is never queued: a slot taken meanwhile is a 429 too
                await asyncio.wait_for(self.runs.host_slots.__aenter__(), 1.0)
            except TimeoutError:
                raise busy from None
            self.runs.host_running += 1
        self._opening += 1
        terminal_id = req.terminal_id
        prepared = False
        try:
            spec, shell = self._spec(req, agent, chosen.backend, terminal_id)
            if chosen.run_as:
                if (user is None or spec.workspace is None
                        or not getattr(self.executors[chosen.backend], "switches_user", False)):
                    raise ExecutionError(f"the {chosen.backend} backend cannot run this as {chosen.run_as!r}")
                await asyncio.to_thread(hand_over, spec.workspace, user, self.settings)
                spec.run_as = chosen.run_as
            if req.workspace_id is not None:
                if self.workspaces is None:
                    raise BadRequest("projects are not available")
                # Exactly what a run in this workspace gets: busy-marked (merge/discard and other
                # runs wait), worktree ensured, git made to work on this backend.
                access = workspace_access(chosen.backend)
                spec = await self.workspaces.prepare(req.workspace_id, terminal_id, access, spec)
                prepared = True
            if spec.workspace is not None:  # an agent's working_dir keeps its owners; ours are handed over
                spec.hand_over = service_owned(spec.workspace, self.settings)
            cols, rows = clamp_size(req.cols, req.rows)
            pty = await self._start(chosen.backend, spec, cols, rows, shell)
        except BaseException:
            if host:
                self.runs.host_running -= 1
                await self.runs.host_slots.__aexit__(None, None, None)
            if req.scratch and req.workspace is not None:
                shutil.rmtree(req.workspace, ignore_errors=True)
            if prepared and req.workspace_id is not None:
                await self._settle(req.workspace_id, chosen.backend, terminal_id)
            raise
        finally:
            self._opening -= 1
        term = Terminal(id=terminal_id, owner=req.owner, backend=chosen.backend, route_reason=chosen.reason,
                        command="shell" if shell and REMOTE in plugins.capabilities(chosen.backend)
                        else " ".join(spec.argv),
                        cols=cols, rows=rows, pty=pty, workspace=req.workspace, scratch=req.scratch,
                        release_slot=host, actor=req.actor, workspace_id=req.workspace_id)
        if self.settings.terminal_record:
            term.recorder = Recorder(self.settings.home / "terminals" / f"{terminal_id}.cast", cols, rows)
        self.terminals[terminal_id] = term
        term.pump = asyncio.create_task(self._pump(term), name=f"terminal {terminal_id}")
        self._arm_idle(term)
        return term

    def _spec(self, req: TerminalRequest, agent: dict[str, Any], backend: str,
              terminal_id: str) -> tuple[ExecSpec, bool]:
        """(what to start, whether it is just a shell)."""
        if agent:
            # The agent's CLI with no prompt: its extra args minus any prompt placeholder.
            argv = [agent["command"], *(a for a in agent.get("args", []) if "{prompt" not in a)]
        else:
            argv = [next((s for s in SHELLS if shutil.which(s, path="/usr/bin:/bin")), "sh"), "-i"]
        workspace = req.workspace
        if workspace is None:
            raise BadRequest("the terminal has no workspace")
        if req.workspace_id is None:  # a git worktree is made (or re-made) by Workspaces.prepare
            workspace.mkdir(parents=True, exist_ok=True)
        env = {**TERMINAL_ENV, **({} if agent else SHELL_ENV), **dict(agent.get("env") or {})}
        return ExecSpec(argv=argv, env=env, workspace=workspace, network=bool(agent.get("network", False)),
                        labels={"terminal": terminal_id}, timeout_s=7 * 24 * 3600), not agent

    async def _start(self, backend: str, spec: ExecSpec, cols: int, rows: int, shell: bool) -> Pty:
        """The backend's own PTY (``open_pty``: a host PTY, a cloud PTY session); a backend
        without one has no terminals."""
        open_pty = getattr(self.executors[backend], "open_pty", None)
        if open_pty is None:
            raise BadRequest(f"the {backend} backend has no terminals")
        pty: Pty = await open_pty(spec, cols, rows, shell)
        return pty

    # -- the byte pump ----------------------------------------------------------------------------

    async def _pump(self, term: Terminal) -> None:
        limit = self.settings.terminal_scrollback_bytes
        try:
            while data := await term.pty.read():
                if term.recorder is not None:
                    term.recorder.add("o", data)
                term.scrollback += data
                if len(term.scrollback) > limit:
                    del term.scrollback[:len(term.scrollback) - limit]
                client = term.client
                if client is not None:
                    await client.queue.put(data)  # blocks while the client does not read: backpressure
            term.exit_code = await term.pty.wait()
        except Exception:
            log.exception("terminal %s: reading failed", term.id)
        finally:
            term.ended.set()
            self.terminals.pop(term.id, None)  # gone for the API before the client hears of the exit
            if term.client is not None:
                term.client.end("exited")
            if term.closing is None:
                term.closing = asyncio.create_task(self._close(term, "exited"))

    # -- clients -----------------------------------------------------------------------------------

    def attach(self, term: Terminal) -> tuple[Client, bytes]:
        """A new client (replacing any earlier one) and the scroll-back it should show first."""
        if term.client is not None:
            term.client.end("replaced")
        client = term.client = Client()
        if term.idle_timer is not None:
            term.idle_timer.cancel()
            term.idle_timer = None
        return client, bytes(term.scrollback)

    def detach(self, term: Terminal, client: Client) -> None:
        if term.client is client:
            term.client = None
            client.end("detached")
            self._arm_idle(term)

    def _arm_idle(self, term: Terminal) -> None:
        if term.idle_timer is not None:
            term.idle_timer.cancel()
        if term.ended.is_set():
            return
        term.idle_timer = asyncio.get_running_loop().call_later(
            self.settings.terminal_idle_timeout_s, lambda: self.close_soon(term, "idle timeout"))

    async def type(self, term: Terminal, data: bytes) -> None:
        if term.recorder is not None:
            term.recorder.add("i", data)
        await term.pty.write(data)

    async def resize(self, term: Terminal, cols: int, rows: int) -> None:
        term.cols, term.rows = clamp_size(cols, rows)
        if term.recorder is not None:
            term.recorder.add("r", f"{term.cols}x{term.rows}")
        await term.pty.resize(term.cols, term.rows)

    # -- lookup and closing ------------------------------------------------------------------------

    def get(self, terminal_id: str, owner: str | None) -> Terminal:
        """``owner`` None = the admin (every terminal); others see only their own (404 otherwise)."""
        term = self.terminals.get(terminal_id)
        if term is None or (owner is not None and term.owner != owner):
            raise NotFound(f"terminal {terminal_id!r} not found")
        return term

    def list(self, owner: str | None) -> list[dict[str, Any]]:
        return [t.public() for t in self.terminals.values() if owner is None or t.owner == owner]

    def close_soon(self, term: Terminal, reason: str) -> None:
        if term.closing is None:
            term.closing = asyncio.create_task(self._close(term, reason))

    async def close(self, term: Terminal, reason: str) -> None:
        self.close_soon(term, reason)
        assert term.closing is not None
        await asyncio.shield(term.closing)

    async def _close(self, term: Terminal, reason: str) -> None:
        try:
            if term.idle_timer is not None:
                term.idle_timer.cancel()
            await term.pty.close()
            if term.pump is not None and asyncio.current_task() is not term.pump:
                try:
                    await asyncio.wait_for(asyncio.shield(term.pump), 5)
                except TimeoutError:
                    term.pump.cancel()
        except Exception:
            log.exception("terminal %s: closing failed", term.id)
        finally:
            term.ended.set()
            if term.client is not None:
                term.client.end("closed")
            self.terminals.pop(term.id, None)
            if term.release_slot:
                term.release_slot = False
                self.runs.host_running -= 1
                await self.runs.host_slots.__aexit__(None, None, None)
            if term.recorder is not None:
                term.recorder.close()
            if term.scratch and term.workspace is not None:
                await asyncio.to_thread(shutil.rmtree, term.workspace, True)
            if term.workspace_id is not None:
                await self._settle(term.workspace_id, term.backend, term.id)
            for callback in self.on_close:
                with contextlib.suppress(Exception):
                    callback(term, reason)

    async def _settle(self, workspace_id: str, backend: str, terminal_id: str) -> None:
        """Commit what was committed or left in the workspace on its branch, as after a run:
        local edits, the sandbox's private git dir's commits, the Daytona sandbox's patch."""
        if self.workspaces is None:
            return
        try:
            await self.workspaces.settle(workspace_id, f"Terminal session {terminal_id}", workspace_access(backend),
                                         run_id=terminal_id)
        except Exception:
            log.exception("terminal %s: could not commit its workspace", terminal_id)

    async def shutdown(self) -> None:
        for term in list(self.terminals.values()):
            self.close_soon(term, "service stopped")
        tasks = [t.closing for t in list(self.terminals.values()) if t.closing is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
