"""PTY half of the Daytona emulator's toolbox, as the daemon (``apps/daemon/pkg/toolbox/process/pty``) does it.

* ``WS GET /process/pty/create-connect?id=&cols=&rows=[&cwd=]`` creates and attaches in one
  round trip; env vars arrive as the subprotocol ``X-Daytona-Pty-Envs~<base64url JSON>``, and
  ``X-Daytona-Pty-Exit-Control`` asks for the ``exited`` control message. Size above 1000 or
  a taken id is refused before the upgrade (400 / 409), as the daemon does.
* After the upgrade: text ``{"type":"control","status":"connected"}``, then binary output
  both ways. On exit: ``{"type":"control","status":"exited","exitCode":n[,"exitReason"]}``,
  then close 1000 (exit 0) or 1011 with the JSON reason ``{"exitCode":n,"exitReason":..}``.
* ``WS GET /process/pty/{id}/connect`` attaches another client (an ended session gets an
  ``error`` control message); every client gets all output from then on, and one whose
  256-message queue is full is dropped with 1008 "slow consumer" — the session lives on.
* ``POST /process/pty`` (create), ``GET /process/pty`` (list), ``GET|DELETE /process/pty/{id}``,
  ``POST /process/pty/{id}/resize`` (``PtySessionInfo``; 410 once the session has ended).

The shell is the host's bash (else sh) with ``-i -l`` on a real PTY, in the sandbox's
directory, carrying the sandbox tag so deleting the sandbox kills it.
Faults: ``emu.pty_fault = "silent"`` (the upgrade succeeds, "connected" never comes) or ``"error"``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import struct
import termios
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

if TYPE_CHECKING:
    from fakes.daytona_emulator import DaytonaEmulator, EmuSandbox

EXIT_CONTROL = "X-Daytona-Pty-Exit-Control"
ENVS_PREFIX = "X-Daytona-Pty-Envs~"
CLIENT_QUEUE = 256


@dataclass
class PtyClient:
    ws: web.WebSocketResponse
    exit_control: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))


@dataclass
class EmuPty:
    id: str
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    active: bool = False
    master: int = -1
    proc: asyncio.subprocess.Process | None = None
    clients: list[PtyClient] = field(default_factory=list)
    exit_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "cwd": self.cwd, "envs": self.envs, "cols": self.cols, "rows": self.rows,
                "createdAt": self.created_at, "active": self.active, "lazyStart": False}


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "message": message, "statusCode": status}, status=status)


def _winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _descendants(root: int) -> list[int]:
    """Pids below ``root``, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = open(f"/proc/{entry.name}/stat").read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _ctty() -> None:  # in the child: a new session with the PTY as its controlling terminal
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyToolbox:
    def __init__(self, emu: DaytonaEmulator, sandbox_of: Any, sandbox_env: str) -> None:
        self.emu, self.sandbox_of, self.sandbox_env = emu, sandbox_of, sandbox_env

    # -- lifecycle -------------------------------------------------------------------------------
    def _new(self, sb: EmuSandbox, sid: str, cwd: str | None, envs: dict[str, str], cols: int,
             rows: int) -> EmuPty | web.Response:
        if not sid:
            return _err(400, "session ID is required")
        if sid in sb.ptys:
            return _err(409, f"PTY session with ID '{sid}' already exists")
        if cols > 1000:
            return _err(400, "invalid value for cols - must be less than 1000")
        if rows > 1000:
            return _err(400, "invalid value for rows - must be less than 1000")
        envs.setdefault("TERM", "xterm-256color")
        return EmuPty(sid, cwd or str(sb.root), envs, cols, rows)

    async def _start(self, sb: EmuSandbox, pty: EmuPty) -> None:
        master, slave = os.openpty()
        _winsize(master, pty.cols, pty.rows)
        shell = shutil.which("bash") or "/bin/sh"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(sb.root), "LANG": "C.UTF-8",
               **sb.env, **pty.envs, self.sandbox_env: sb.id}
        try:
            pty.proc = await asyncio.create_subprocess_exec(
                shell, "-i", "-l", stdin=slave, stdout=slave, stderr=slave, cwd=pty.cwd, env=env,
                preexec_fn=_ctty)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        pty.master, pty.active = master, True
        sb.ptys[pty.id] = pty
        pty.reader = asyncio.create_task(self._read_loop(sb, pty))

    async def _read_loop(self, sb: EmuSandbox, pty: EmuPty) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = os.read(pty.master, 32 * 1024)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(pty.master, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(pty.master)
                continue
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EBADF):
                    raise
                data = b""
            if not data:
                break
            for client in list(pty.clients):
                try:
                    client.queue.put_nowait(data)
                except asyncio.QueueFull:  # the daemon drops a slow client, never stalls the PTY
                    pty.clients.remove(client)
                    await client.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow consumer")
        assert pty.proc is not None
        code = await pty.proc.wait()
        await self._ended(sb, pty, 128 - code if code < 0 else code)

    async def _ended(self, sb: EmuSandbox, pty: EmuPty, code: int) -> None:
        """Mark the session ended; each client's writer flushes what is queued, then reports the exit."""
        if pty.done.is_set():
            return
        pty.active, pty.exit_code = False, code
        with contextlib.suppress(OSError):
            os.close(pty.master)
        sb.ptys.pop(pty.id, None)
        pty.done.set()
        for client in list(pty.clients):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.queue.put(None), 5)

    async def kill(self, sb: EmuSandbox, pty: EmuPty) -> None:
        """SIGKILL the shell's descendants depth-first (job-control groups escape a killpg), then
        the shell; the daemon then reports 137."""
        if pty.proc is not None and pty.proc.returncode is None:
            for pid in reversed(_descendants(pty.proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                pty.proc.kill()
            await pty.proc.wait()
        await self._ended(sb, pty, 137)
        if pty.reader is not None:
            pty.reader.cancel()
            await asyncio.gather(pty.reader, return_exceptions=True)

    # -- WebSocket -------------------------------------------------------------------------------
    @staticmethod
    def _protocols(request: web.Request) -> tuple[bool, dict[str, str]]:
        exit_control, envs = False, {}
        for token in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            token = token.strip()
            if token == EXIT_CONTROL:
                exit_control = True
            elif token.startswith(ENVS_PREFIX):
                encoded = token[len(ENVS_PREFIX):]
                envs = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        return exit_control, envs

    async def create_connect(self, request: web.Request) -> web.StreamResponse:
        sb = self.sandbox_of(request)
        q = request.query
        exit_control, envs = self._protocols(request)
        try:
            cols, rows = int(q.get("cols", 80)), int(q.get("rows", 24))
        except ValueError:
            return _err(400, "cols and rows must be numbers")
        pty = self._new(sb, q.get("id", ""), q.get("cwd"), envs, cols, rows)
        if isinstance(pty, web.Response):
            return pty
        await self._start(sb, pty)
        return await self._attach(request, pty, exit_control)

    async def connect(self, request: web.Request) -> web.StreamResponse:
        sb = self.sandbox_of(request)
        exit_control, _ = self._protocols(request)
        pty = sb.ptys.get(request.match_info["sid"])
        if pty is None or not pty.active:
            ws = web.WebSocketResponse(protocols=(EXIT_CONTROL,))
            await ws.prepare(request)
            await ws.send_str(json.dumps({"type": "control", "status": "error", "error": "Failed to connect to PTY "
                                          f"session: PTY session {request.match_info['sid']} not found"}))
            await ws.close()
            return ws
        return await self._attach(request, pty, exit_control)

    async def _attach(self, request: web.Request, pty: EmuPty, exit_control: bool) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(EXIT_CONTROL,))
        await ws.prepare(request)
        if self.emu.pty_fault == "silent":  # never says "connected": the SDK times out after 10 s
            await ws.receive()
            return ws
        if self.emu.pty_fault == "error":
            await ws.send_str(json.dumps({"type": "control", "status": "error", "error": "emulated PTY failure"}))
            await ws.close()
            return ws
        client = PtyClient(ws, exit_control)
        pty.clients.append(client)
        writer = asyncio.create_task(self._client_writer(pty, client))
        await ws.send_str(json.dumps({"type": "control", "status": "connected"}))
        try:
            async for msg in ws:
                if msg.type in (web.WSMsgType.BINARY, web.WSMsgType.TEXT) and pty.active:
                    data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                    await self._write(pty, data)
        finally:
            if client in pty.clients:
                pty.clients.remove(client)
            if not writer.done() and pty.done.is_set():  # let it report the exit
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(writer), 5)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return ws

    @staticmethod
    async def _client_writer(pty: EmuPty, client: PtyClient) -> None:
        while (data := await client.queue.get()) is not None:
            await client.ws.send_bytes(data)
        code = pty.exit_code or 0
        reason = None if code == 0 else {130: "Ctrl+C", 137: "SIGKILL", 143: "SIGTERM"}.get(
            code, f"signal {code - 128}" if code > 128 else "non-zero exit")
        if client.exit_control:
            control: dict[str, Any] = {"type": "control", "status": "exited", "exitCode": code}
            await client.ws.send_str(json.dumps({**control, **({"exitReason": reason} if reason else {})}))
        data = {"exitCode": code, **({"exitReason": reason} if reason else {})}
        await client.ws.close(code=WSCloseCode.OK if code == 0 else WSCloseCode.INTERNAL_ERROR,
                              message=json.dumps(data).encode())

    @staticmethod
    async def _write(pty: EmuPty, data: bytes) -> None:
        view = memoryview(data)
        while view and pty.active:
            try:
                view = view[os.write(pty.master, view):]
            except BlockingIOError:
                await asyncio.sleep(0.01)
            except OSError:
                return

    # -- REST ------------------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        sb = self.sandbox_of(request)
        body = await request.json()
        pty = self._new(sb, body.get("id", ""), body.get("cwd"), dict(body.get("envs") or {}),
                        int(body.get("cols") or 80), int(body.get("rows") or 24))
        if isinstance(pty, web.Response):
            return pty
        await self._start(sb, pty)
        return web.json_response({"sessionId": pty.id}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": [p.json() for p in self.sandbox_of(request).ptys.values()]})

    async def get(self, request: web.Request) -> web.Response:
        pty = self.sandbox_of(request).ptys.get(request.match_info["sid"])
        return web.json_response(pty.json()) if pty else _err(404, "PTY session not found")

    async def delete(self, request: web.Request) -> web.Response:
        sb = self.sandbox_of(request)
        pty = sb.ptys.get(request.match_info["sid"])
        if pty is None:
            return _err(404, "PTY session not found")
        await self.kill(sb, pty)
        return web.json_response({"message": "PTY session deleted"})

    async def resize(self, request: web.Request) -> web.Response:
        sb = self.sandbox_of(request)
        body = await request.json()
        cols, rows = int(body.get("cols", 0)), int(body.get("rows", 0))
        if cols > 1000 or rows > 1000:
            return _err(400, "cols and rows must be less than 1000")
        pty = sb.ptys.get(request.match_info["sid"])
        if pty is None or not pty.active:
            return _err(410, f"PTY session '{request.match_info['sid']}' has terminated and cannot be resized")
        pty.cols, pty.rows = cols, rows
        _winsize(pty.master, cols, rows)
        return web.json_response(pty.json())


def add_pty_routes(app: web.Application, emu: DaytonaEmulator, sandbox_of: Any, sandbox_env: str) -> None:
    tb = PtyToolbox(emu, sandbox_of, sandbox_env)
    emu.pty_toolbox = tb
    p = "/toolbox/{id}/process/pty"
    app.router.add_get(p + "/create-connect", tb.create_connect)
    app.router.add_post(p, tb.create)
    app.router.add_get(p, tb.list)
    app.router.add_get(p + "/{sid}/connect", tb.connect)
    app.router.add_post(p + "/{sid}/resize", tb.resize)
    app.router.add_get(p + "/{sid}", tb.get)
    app.router.add_delete(p + "/{sid}", tb.delete)
