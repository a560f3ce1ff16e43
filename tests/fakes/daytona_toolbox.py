"""Toolbox half of the Daytona emulator: sessions, real subprocesses, log streams, files.

Mirrors what the daemon does behind ``{toolboxProxyUrl}/{sandboxId}``: a session command is
a ``/bin/sh -c`` process in the sandbox work dir whose stdout/stderr are appended to one log
tagged with the 3-byte markers (``\\x01\\x01\\x01`` stdout, ``\\x02\\x02\\x02`` stderr) as the
bytes arrive; ``?follow=true`` streams that log over a WebSocket while it grows and closes
with 1000 once the exit code exists. Stdin stays open for the command's whole life (the
daemon keeps its input FIFO open) and ``/input`` writes to it, echoing into the log unless
the command was started with ``suppressInputEcho``. Here, unlike the daemon, each command
runs in its own shell, so ``cd``/``export`` do not carry over between commands of a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, WSCloseCode, web

if TYPE_CHECKING:
    from fakes.daytona_emulator import DaytonaEmulator, EmuSandbox

STDOUT = b"\x01\x01\x01"
STDERR = b"\x02\x02\x02"


@dataclass
class EmuCommand:
    id: str
    command: str
    suppress_echo: bool
    log: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    killed: bool = False
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "command": self.command}
        if self.exit_code is not None:
            out["exitCode"] = self.exit_code
        return out


@dataclass
class EmuSession:
    id: str
    commands: dict[str, EmuCommand] = field(default_factory=dict)


def demux(log: bytes) -> tuple[str, str]:
    """Split a marker-tagged log into (stdout, stderr); a marker applies until the next one."""
    out, err = bytearray(), bytearray()
    target = out
    i = 0
    while i < len(log):
        if log[i : i + 3] == STDOUT:
            target, i = out, i + 3
        elif log[i : i + 3] == STDERR:
            target, i = err, i + 3
        else:
            target.append(log[i])
            i += 1
    return out.decode(errors="replace"), err.decode(errors="replace")


SANDBOX_ENV = "DAYTONA_EMULATOR_SANDBOX"


def kill_sandbox_processes(sandbox_id: str) -> None:
    """A real sandbox's processes all die with it, even those that left the command's session:
    every process the emulator starts carries the sandbox id in its environment."""
    needle = f"{SANDBOX_ENV}={sandbox_id}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "environ"), "rb") as fh:
                found = needle in fh.read().split(b"\0")
        except OSError:
            continue
        if found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


async def kill_session(session: EmuSession) -> None:
    """SIGKILL every running command's process group, as deleting a sandbox does."""
    for cmd in session.commands.values():
        if cmd.proc is not None and cmd.proc.returncode is None:
            cmd.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(cmd.proc.pid, signal.SIGKILL)
        if cmd.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(cmd.task), 5)


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"statusCode": status, "message": message, "code": code, "source": "DAYTONA_DAEMON"}, status=status
    )


def _resolve(sb: EmuSandbox, path: str) -> Path:
    """A sandbox path on the host; relative paths are against the work dir, and nothing
    may resolve outside the sandbox's directory (the emulator runs on the test host)."""
    candidate = Path(path) if os.path.isabs(path) else sb.root / path
    resolved = candidate.resolve()
    if resolved != sb.root and sb.root not in resolved.parents:
        raise web.HTTPBadRequest(
            text=json.dumps(
                {
                    "message": f"path outside the sandbox: {path}",
                    "code": "INVALID_FILE_PATH",
                    "source": "DAYTONA_DAEMON",
                }
            ),
            content_type="application/json",
        )
    return resolved


class Toolbox:
    """Request handlers; each looks the sandbox up and insists it is ``started``."""

    def __init__(self, emu: DaytonaEmulator) -> None:
        self.emu = emu

    def sandbox(self, request: web.Request) -> EmuSandbox:
        sb = self.emu.sandboxes.get(request.match_info["id"])
        if sb is None:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {"message": "sandbox not found", "code": "NOT_FOUND", "source": "DAYTONA_PROXY"}
                ),
                content_type="application/json",
            )
        if sb.state != "started":
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"message": "Is the Sandbox started?", "code": "BAD_REQUEST", "source": "DAYTONA_PROXY"}
                ),
                content_type="application/json",
            )
        return sb

    def command(self, request: web.Request) -> tuple[EmuSandbox, EmuCommand]:
        sb = self.sandbox(request)
        session = sb.sessions.get(request.match_info["sid"])
        cmd = session.commands.get(request.match_info["cid"]) if session else None
        if cmd is None:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {"message": "command not found", "code": "PROCESS_NOT_FOUND", "source": "DAYTONA_DAEMON"}
                ),
                content_type="application/json",
            )
        return sb, cmd

    async def work_dir(self, request: web.Request) -> web.Response:
        return web.json_response({"dir": str(self.sandbox(request).root)})

    async def create_session(self, request: web.Request) -> web.Response:
        sb = self.sandbox(request)
        sid = (await request.json())["sessionId"]
        if sid in sb.sessions:
            return _error(409, "session already exists", "CONFLICT")
        sb.sessions[sid] = EmuSession(sid)
        return web.Response(status=201)

    async def get_session(self, request: web.Request) -> web.Response:
        session = self.sandbox(request).sessions.get(request.match_info["sid"])
        if session is None:
            return _error(404, "session not found", "NOT_FOUND")
        return web.json_response(
            {"sessionId": session.id, "commands": [c.json() for c in session.commands.values()]}
        )

    async def list_sessions(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"sessionId": s.id, "commands": [c.json() for c in s.commands.values()]}
                for s in self.sandbox(request).sessions.values()
            ]
        )

    async def delete_session(self, request: web.Request) -> web.Response:
        session = self.sandbox(request).sessions.pop(request.match_info["sid"], None)
        if session is None:
            return _error(404, "session not found", "NOT_FOUND")
        await kill_session(session)
        return web.Response(status=204)

    async def execute(self, request: web.Request) -> web.Response:
        sb = self.sandbox(request)
        session = sb.sessions.get(request.match_info["sid"])
        if session is None:
            return _error(404, "session not found", "NOT_FOUND")
        body = await request.json()
        cmd = EmuCommand(str(uuid.uuid4()), body["command"], bool(body.get("suppressInputEcho")))
        session.commands[cmd.id] = cmd
        await self._spawn(sb, cmd)
        if body.get("runAsync") or body.get("async"):
            return web.json_response({"cmdId": cmd.id}, status=202)
        assert cmd.task is not None
        await cmd.task
        stdout, stderr = demux(bytes(cmd.log))
        return web.json_response(
            {
                "cmdId": cmd.id,
                "output": cmd.log.decode(errors="replace"),
                "stdout": stdout,
                "stderr": stderr,
                "exitCode": cmd.exit_code,
            }
        )

    async def _spawn(self, sb: EmuSandbox, cmd: EmuCommand) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(sb.root),
            "LANG": "C.UTF-8",
            **sb.env,
            SANDBOX_ENV: sb.id,
        }
        cmd.proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            cmd.command,
            cwd=sb.root,
            env=env,
            start_new_session=True,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        cmd.task = asyncio.create_task(self._pump_all(cmd))

    async def _pump_all(self, cmd: EmuCommand) -> None:
        assert cmd.proc is not None and cmd.proc.stdout is not None and cmd.proc.stderr is not None
        await asyncio.gather(
            self._pump(cmd, cmd.proc.stdout, STDOUT), self._pump(cmd, cmd.proc.stderr, STDERR)
        )
        code = await cmd.proc.wait()
        if cmd.proc.stdin is not None:
            cmd.proc.stdin.close()
        async with cmd.cond:
            cmd.exit_code = 128 - code if code < 0 else code
            cmd.cond.notify_all()

    @staticmethod
    async def _pump(cmd: EmuCommand, stream: asyncio.StreamReader, marker: bytes) -> None:
        while chunk := await stream.read(65536):
            async with cmd.cond:
                cmd.log += marker + chunk
                cmd.cond.notify_all()

    async def command_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.command(request)[1].json())

    async def logs(self, request: web.Request) -> web.StreamResponse:
        _sb, cmd = self.command(request)
        if request.query.get("follow") != "true":
            stdout, stderr = demux(bytes(cmd.log))
            return web.json_response(
                {"output": cmd.log.decode(errors="replace"), "stdout": stdout, "stderr": stderr}
            )
        drop = self.emu.drop_streams > 0
        if drop:
            self.emu.drop_streams -= 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sent = 0
        while True:
            async with cmd.cond:
                await cmd.cond.wait_for(lambda sent=sent: len(cmd.log) > sent or cmd.exit_code is not None)
                data, done = bytes(cmd.log[sent:]), cmd.exit_code is not None
            if data:
                await ws.send_bytes(data)
                sent += len(data)
            if drop and sent >= self.emu.drop_after_bytes:
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"emulated log stream drop")
                return ws
            if done:
                code = WSCloseCode.GOING_AWAY if cmd.killed else WSCloseCode.OK
                await ws.close(code=code, message=b"sandbox destroyed" if cmd.killed else b"")
                return ws

    async def send_input(self, request: web.Request) -> web.Response:
        _sb, cmd = self.command(request)
        if cmd.exit_code is not None or cmd.proc is None or cmd.proc.stdin is None:
            return _error(
                410,
                f"command has already completed with exit code {cmd.exit_code}",
                "COMMAND_ALREADY_COMPLETED",
            )
        data: str = (await request.json())["data"]
        if not data.endswith("\n"):
            data += "\n"
        cmd.proc.stdin.write(data.encode())
        await cmd.proc.stdin.drain()
        if not cmd.suppress_echo:
            async with cmd.cond:
                cmd.log += STDOUT + data.encode()
                cmd.cond.notify_all()
        return web.Response(status=204)

    async def exec_simple(self, request: web.Request) -> web.Response:
        """``process.exec``: one command, combined output (workspace set-up and change collection)."""
        sb = self.sandbox(request)
        body = await request.json()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(sb.root),
            **(body.get("envs") or {}),
            SANDBOX_ENV: sb.id,
        }
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            body["command"],
            cwd=_resolve(sb, body.get("cwd") or "."),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        out, _ = await proc.communicate()
        return web.json_response({"result": out.decode(errors="replace"), "exitCode": proc.returncode})

    async def upload(self, request: web.Request) -> web.Response:
        sb = self.sandbox(request)
        reader = await request.multipart()
        paths: dict[str, str] = {}  # "files[i]" -> destination, from the files[i].path field
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            index, _, kind = (part.name or "").rpartition(".")
            if kind == "path":
                paths[index] = (await part.read()).decode()
            elif kind == "file":
                # aiohttp percent-encodes the filename, so the path field is authoritative
                target = _resolve(sb, paths.get(index) or unquote(part.filename or ""))
                target.parent.mkdir(parents=True, exist_ok=True)
                data = await part.read()
                self.emu.bytes_uploaded += len(data)
                target.write_bytes(data)
            else:
                await part.release()
        return web.Response(status=200)

    async def download(self, request: web.Request) -> web.Response:
        sb = self.sandbox(request)
        boundary = uuid.uuid4().hex
        body = bytearray()
        for path in (await request.json())["paths"]:
            body += f"--{boundary}\r\n".encode()
            try:
                data = _resolve(sb, path).read_bytes()
            except (OSError, web.HTTPBadRequest):
                err = {
                    "message": f"file not found: {path}",
                    "statusCode": 404,
                    "code": "FILE_NOT_FOUND",
                    "source": "DAYTONA_DAEMON",
                }
                body += (
                    (
                        f'Content-Disposition: form-data; name="error"; filename="{path}"\r\n'
                        "Content-Type: application/json\r\n\r\n"
                    ).encode()
                    + json.dumps(err).encode()
                    + b"\r\n"
                )
                continue
            body += (
                f'Content-Disposition: form-data; name="file"; filename="{path}"\r\n'
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            body += data + b"\r\n"
            self.emu.bytes_downloaded += len(data)
        body += f"--{boundary}--\r\n".encode()
        return web.Response(
            body=bytes(body), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )

    async def create_folder(self, request: web.Request) -> web.Response:
        _resolve(self.sandbox(request), request.query["path"]).mkdir(parents=True, exist_ok=True)
        return web.Response(status=201)


def add_toolbox_routes(app: web.Application, emu: DaytonaEmulator) -> None:
    tb = Toolbox(emu)
    p = "/toolbox/{id}"
    s = p + "/process/session/{sid}"
    app.router.add_get(p + "/work-dir", tb.work_dir)
    app.router.add_get(p + "/user-home-dir", tb.work_dir)
    app.router.add_post(p + "/process/execute", tb.exec_simple)
    app.router.add_post(p + "/process/session", tb.create_session)
    app.router.add_get(p + "/process/session", tb.list_sessions)
    app.router.add_get(s, tb.get_session)
    app.router.add_delete(s, tb.delete_session)
    app.router.add_post(s + "/exec", tb.execute)
    app.router.add_get(s + "/command/{cid}", tb.command_info)
    app.router.add_get(s + "/command/{cid}/logs", tb.logs)
    app.router.add_post(s + "/command/{cid}/input", tb.send_input)
    app.router.add_post(p + "/files/bulk-upload", tb.upload)
    app.router.add_post(p + "/files/bulk-download", tb.download)
    app.router.add_post(p + "/files/folder", tb.create_folder)
