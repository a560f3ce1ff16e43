"""An emulator of the Daytona API that the real ``daytona`` SDK (0.226) works against.

It serves the control plane under ``/api`` and the toolbox (the in-sandbox daemon, reached
through the toolbox proxy) under ``/toolbox/{sandbox_id}`` on one aiohttp server bound to
127.0.0.1:0. Wire shapes follow /work/shared/notes/daytona-sdk.md: camelCase JSON, strict
types, the required Sandbox DTO fields, the ``/api/socket.io/`` 404 the SDK tolerates.

Sandboxes are real enough to test an executor end to end: each has a private temporary
directory used as its work dir, session commands run as local ``/bin/sh -c`` subprocesses in
it (the daemon runs them through a shell too), and deleting a sandbox kills its process
groups. Faults are injected per test through the public methods of ``DaytonaEmulator``;
load is shaped by ``configure`` (create delay, latency per call, a rate of 429 answers).
``tls`` (an SSL context, set before ``start``) makes it serve HTTPS and WSS as Daytona does:
bench/scale.py uses it, since a TLS connection costs its client far more memory than a plain one.
The toolbox half lives in ``daytona_toolbox.py`` to keep both files readable.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import random
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from fakes.daytona_pty import EmuPty, PtyToolbox, add_pty_routes
from fakes.daytona_toolbox import SANDBOX_ENV, EmuSession, add_toolbox_routes, kill_sandbox_processes, kill_session

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int, message: str, code: str = "ERROR", source: str = "DAYTONA_API"
) -> web.Response:
    """The API's error envelope; the SDK maps (source, code) and the status to typed errors."""
    body = {
        "statusCode": status,
        "message": message,
        "code": code,
        "source": source,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    return web.json_response(body, status=status)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 in ``directory``, made by ``openssl`` (for ``tls``);
    raises ``OSError`` when openssl is missing or fails."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                           "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True)
    if made.returncode != 0:
        raise OSError(f"openssl could not make a certificate: {made.stderr.decode(errors='replace')}")
    return cert, key


@dataclass
class FaultRule:
    """Answer the next ``remaining`` requests matching ``pattern`` ("METHOD /path" glob) with ``status``."""

    pattern: str
    remaining: int
    status: int
    after: bool = False  # handle the request, then answer ``status`` (the answer was lost, not the request)


@dataclass
class EmuSandbox:
    id: str
    name: str
    labels: dict[str, str]
    env: dict[str, str]
    root: Path
    state: str = "creating"
    error_reason: str | None = None
    cpu: int = 1
    memory: int = 1
    disk: int = 3
    network_block_all: bool = False
    auto_stop_interval: int | None = None
    auto_delete_interval: int | None = None
    build_info: dict[str, Any] | None = None
    snapshot: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    sessions: dict[str, EmuSession] = field(default_factory=dict)
    ptys: dict[str, EmuPty] = field(default_factory=dict)
    starter: asyncio.Task[None] | None = None


class DaytonaEmulator:
    """The fake service. Tests read ``sandboxes``/``deleted``/``requests`` and inject faults."""

    def __init__(self, base_dir: Path, api_key: str = "test-key") -> None:
        self.base_dir = base_dir
        self.api_key = api_key
        self.sandboxes: dict[str, EmuSandbox] = {}
        self.deleted: list[str] = []
        self.requests: list[tuple[str, str, Any]] = []
        self.page_size = 100
        self.create_delay_s = 0.0
        self.never_start: str | None = None  # None | "creating" | "error"
        self.drop_streams = 0
        self.drop_after_bytes = 1
        self.pty_fault: str | None = None  # None | "silent" | "error" (see daytona_pty.py)
        self.pty_toolbox: PtyToolbox | None = None
        self.call_latency_s = 0.0
        self.tls: ssl.SSLContext | None = None  # set before start(): serve HTTPS (and WSS), as Daytona does
        self.rate_429 = 0.0
        self.rate_429_toolbox = False
        self.api_rate_limit = 0.0
        self._tokens = 0.0
        self._refilled = 0.0
        self.rate_limited = 0  # 429s answered because of ``rate_429`` or ``api_rate_limit``
        self.peak_sandboxes = 0
        self.creating = 0  # sandboxes still in their create delay
        self.peak_creating = 0
        self.keep_requests = True
        self._random = random.Random(0)
        self.bytes_uploaded = 0  # file contents moved through the toolbox, for benches
        self.bytes_downloaded = 0
        self._faults: list[FaultRule] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----- fault injection -------------------------------------------------------------
    def fail_next(self, pattern: str, count: int = 1, status: int = 429) -> None:
        """The next ``count`` requests matching ``pattern`` (e.g. ``"POST /api/sandbox"``,
        ``"* /toolbox/*/files/bulk-upload"``) get ``status`` before reaching any handler."""
        self._faults.append(FaultRule(pattern, count, status))

    def lose_answer_next(self, pattern: str, count: int = 1, status: int = 504) -> None:
        """The next ``count`` requests matching ``pattern`` are carried out, then answered with
        ``status``, like a gateway that timed out while the request went through."""
        self._faults.append(FaultRule(pattern, count, status, after=True))

    def slow_creation(self, seconds: float) -> None:
        """New sandboxes stay ``creating`` for ``seconds`` before becoming ``started``."""
        self.create_delay_s = seconds

    def never_starting(self, how: str = "creating") -> None:
        """New sandboxes stay ``creating`` forever, or go to ``error`` (``how="error"``)."""
        self.never_start = how

    def drop_log_streams(self, count: int = 1, after_bytes: int = 1) -> None:
        """The next ``count`` log WebSockets close with 1011 once ``after_bytes`` were sent."""
        self.drop_streams = count
        self.drop_after_bytes = after_bytes

    def configure(self, *, create_delay_s: float | None = None, call_latency_s: float | None = None,
                  rate_429: float | None = None, rate_429_toolbox: bool | None = None,
                  api_rate_limit: float | None = None, keep_requests: bool | None = None,
                  seed: int | None = None) -> None:
        """Shape the service like a real, loaded one.

        ``create_delay_s``: a new sandbox is ``creating`` this long. ``call_latency_s``: every
        request waits this long before it is handled (a far-away API). ``rate_429``: this share of
        control-plane requests (and toolbox ones with ``rate_429_toolbox``) is refused with 429,
        at random. ``api_rate_limit``: control-plane requests beyond this many per second (a
        token bucket holding one second's worth) are refused with 429, like a real limiter.
        ``keep_requests`` False stops recording ``requests`` (a long load run would hold them all).
        """
        if api_rate_limit is not None:
            self.api_rate_limit = api_rate_limit
            self._tokens = api_rate_limit
        if create_delay_s is not None:
            self.create_delay_s = create_delay_s
        if call_latency_s is not None:
            self.call_latency_s = call_latency_s
        if rate_429 is not None:
            self.rate_429 = rate_429
        if rate_429_toolbox is not None:
            self.rate_429_toolbox = rate_429_toolbox
        if keep_requests is not None:
            self.keep_requests = keep_requests
        if seed is not None:
            self._random.seed(seed)

    def faults_pending(self) -> int:
        return sum(rule.remaining for rule in self._faults)

    # ----- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/api/socket.io/", _socketio)
        app.router.add_post("/api/sandbox", self._create)
        app.router.add_get("/api/sandbox", self._list)
        app.router.add_get("/api/sandbox/{id}", self._get)
        app.router.add_delete("/api/sandbox/{id}", self._delete)
        app.router.add_post("/api/sandbox/{id}/start", self._start_sandbox)
        app.router.add_post("/api/sandbox/{id}/stop", self._stop_sandbox)
        app.router.add_put("/api/sandbox/{id}/labels", self._labels)
        app.router.add_get("/api/sandbox/{id}/toolbox-proxy-url", self._proxy_url)
        add_pty_routes(app, self, self._toolbox_sandbox, SANDBOX_ENV)  # before the generic toolbox routes
        add_toolbox_routes(app, self)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Kill every leftover process (a leaked sandbox must not outlive the test)."""
        for sandbox_id in list(self.sandboxes):
            await self.remove(sandbox_id)
        if self._runner is not None:
            await self._runner.cleanup()

    async def remove(self, sandbox_id: str) -> EmuSandbox | None:
        """Delete a sandbox: kill its processes, drop its directory, forget it."""
        sandbox = self.sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return None
        if sandbox.starter is not None:
            sandbox.starter.cancel()
        kill_sandbox_processes(sandbox.id)
        for session in sandbox.sessions.values():
            await kill_session(session)
        await self._kill_ptys(sandbox)
        sandbox.state = "destroyed"
        shutil.rmtree(sandbox.root, ignore_errors=True)
        self.deleted.append(sandbox_id)
        return sandbox

    async def _kill_ptys(self, sandbox: EmuSandbox) -> None:
        if self.pty_toolbox is not None:
            for pty in list(sandbox.ptys.values()):
                await self.pty_toolbox.kill(sandbox, pty)

    def _toolbox_sandbox(self, request: web.Request) -> EmuSandbox:
        """The started sandbox a toolbox request is for (404 / 400 "Is the Sandbox started?")."""
        from fakes.daytona_toolbox import Toolbox

        return Toolbox(self).sandbox(request)

    def running_pids(self) -> list[int]:
        """Pids of commands still running in any live sandbox (for leak assertions)."""
        return [
            cmd.proc.pid
            for sb in self.sandboxes.values()
            for s in sb.sessions.values()
            for cmd in s.commands.values()
            if cmd.proc is not None and cmd.proc.returncode is None
        ]

    # ----- HTTP plumbing ---------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        body: Any = None
        if request.can_read_body and request.content_type == "application/json":
            body = await request.json()
        if self.keep_requests:
            self.requests.append((request.method, request.path, body))
        if request.path.startswith("/api/socket.io"):
            return await handler(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_response(401, "Invalid credentials", "UNAUTHORIZED")
        if self.call_latency_s > 0:
            await asyncio.sleep(self.call_latency_s)
        for rule in self._faults:
            if rule.remaining > 0 and fnmatch.fnmatchcase(key, rule.pattern):
                rule.remaining -= 1
                if rule.after:
                    await handler(request)
                return error_response(rule.status, f"injected fault {rule.status}", f"HTTP_{rule.status}")
        control = request.path.startswith("/api/sandbox")
        if (self.rate_429 > 0 and (control or self.rate_429_toolbox) and self._random.random() < self.rate_429
                or control and not self._take_token()):
            self.rate_limited += 1
            return error_response(429, "Too many requests", "TOO_MANY_REQUESTS")
        return await handler(request)

    def _take_token(self) -> bool:
        if self.api_rate_limit <= 0:
            return True
        now = asyncio.get_running_loop().time()
        self._tokens = min(self.api_rate_limit, self._tokens + (now - self._refilled) * self.api_rate_limit)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def sandbox_or_404(self, request: web.Request) -> EmuSandbox:
        sandbox = self.sandboxes.get(request.match_info["id"])
        if sandbox is None:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {
                        "statusCode": 404,
                        "code": "NOT_FOUND",
                        "source": "DAYTONA_API",
                        "message": f"Sandbox with ID or name {request.match_info['id']} not found",
                    }
                ),
                content_type="application/json",
            )
        return sandbox

    def dto(self, sb: EmuSandbox, list_item: bool = False) -> dict[str, Any]:
        """The Sandbox DTO with every field the SDK's strict pydantic model requires."""
        out: dict[str, Any] = {
            "id": sb.id,
            "organizationId": "org-emu",
            "name": sb.name,
            "user": "daytona",
            "labels": sb.labels,
            "public": False,
            "networkBlockAll": sb.network_block_all,
            "target": "us",
            "cpu": sb.cpu,
            "gpu": 0,
            "memory": sb.memory,
            "disk": sb.disk,
            "toolboxProxyUrl": f"{self.url}/toolbox",
            "state": sb.state,
            "createdAt": sb.created_at,
        }
        if not list_item:
            out.update({"env": sb.env, "kvm": False})
        if sb.error_reason:
            out["errorReason"] = sb.error_reason
        if sb.auto_stop_interval is not None:
            out["autoStopInterval"] = sb.auto_stop_interval
        if sb.auto_delete_interval is not None:
            out["autoDeleteInterval"] = sb.auto_delete_interval
        return out

    # ----- control plane ---------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        sandbox_id = str(uuid.uuid4())
        root = (self.base_dir / sandbox_id).resolve()
        root.mkdir(parents=True)
        sb = EmuSandbox(
            id=sandbox_id,
            name=body.get("name") or sandbox_id,
            labels=dict(body.get("labels") or {}),
            env=dict(body.get("env") or {}),
            root=root,
            network_block_all=bool(body.get("networkBlockAll")),
            auto_stop_interval=body.get("autoStopInterval"),
            auto_delete_interval=body.get("autoDeleteInterval"),
            build_info=body.get("buildInfo"),
            snapshot=body.get("snapshot"),
            cpu=int(body.get("cpu") or 1),
            memory=int(body.get("memory") or 1),
            disk=int(body.get("disk") or 3),
        )
        self.sandboxes[sandbox_id] = sb
        self.peak_sandboxes = max(self.peak_sandboxes, len(self.sandboxes))
        if self.never_start == "error":
            sb.state, sb.error_reason = "error", "emulated: image pull failed"
        elif self.never_start is None:
            if self.create_delay_s > 0:
                self.creating += 1
                self.peak_creating = max(self.peak_creating, self.creating)
                sb.starter = asyncio.create_task(self._start_later(sb, self.create_delay_s))
            else:
                sb.state = "started"
        return web.json_response(self.dto(sb))

    async def _start_later(self, sb: EmuSandbox, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            if sb.id in self.sandboxes:
                sb.state = "started"
        finally:
            self.creating -= 1

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.dto(self.sandbox_or_404(request)))

    async def _list(self, request: web.Request) -> web.Response:
        wanted = json.loads(request.query.get("labels") or "{}")
        matches = [
            sb for sb in self.sandboxes.values() if all(sb.labels.get(k) == v for k, v in wanted.items())
        ]
        limit = int(request.query.get("limit") or self.page_size)
        start = int(request.query.get("cursor") or 0)
        page = matches[start : start + limit]
        more = start + limit < len(matches)
        return web.json_response(
            {
                "items": [self.dto(sb, list_item=True) for sb in page],
                "nextCursor": str(start + limit) if more else None,
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        self.sandbox_or_404(request)
        sb = await self.remove(request.match_info["id"])
        assert sb is not None
        return web.json_response(self.dto(sb))

    async def _start_sandbox(self, request: web.Request) -> web.Response:
        sb = self.sandbox_or_404(request)
        if sb.state != "error":
            sb.state = "started"
        return web.json_response(self.dto(sb))

    async def _stop_sandbox(self, request: web.Request) -> web.Response:
        sb = self.sandbox_or_404(request)
        kill_sandbox_processes(sb.id)
        for session in sb.sessions.values():
            await kill_session(session)
        await self._kill_ptys(sb)
        sb.sessions.clear()
        sb.state = "stopped"
        return web.json_response(self.dto(sb))

    async def _labels(self, request: web.Request) -> web.Response:
        sb = self.sandbox_or_404(request)
        sb.labels = dict((await request.json())["labels"])
        return web.json_response({"labels": sb.labels})

    async def _proxy_url(self, request: web.Request) -> web.Response:
        self.sandbox_or_404(request)
        return web.json_response({"url": f"{self.url}/toolbox"})


async def _socketio(_request: web.Request) -> web.Response:
    """The SDK dials Socket.IO for state events; a 404 makes it fall back to polling."""
    return web.Response(status=404, text="socket.io is not emulated")
