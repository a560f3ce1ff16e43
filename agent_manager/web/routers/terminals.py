"""/api/terminals: open interactive terminals, attach to them over a WebSocket, close them.

WebSocket protocol (docs/terminals.md): binary frames are keystrokes in and terminal bytes
out; text frames are JSON control messages — in: ``{"resize": [cols, rows]}`` and
``{"ping": any}``; out: ``{"pong": any}``, ``{"error": str}`` and, last, ``{"exit": code}``.
The upgrade passes the same Host/Origin checks as every request (``web.auth``); a terminal
that is not the caller's closes the socket with 4404, as an unknown one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from pydantic import Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from agent_manager.errors import AgentManagerError, Conflict, ExecutionError, ExecutorUnavailable
from agent_manager.models import RequestedBackend, Strict
from agent_manager.service import Service
from agent_manager.store import agents as agent_store
from agent_manager.store import runs as run_store
from agent_manager.store import users as user_store
from agent_manager.store.database import new_id
from agent_manager.terminals import Client, Terminal, TerminalManager, TerminalRequest
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, owner_filter, principal, service
from agent_manager.workdirs import agent_workspace

router = APIRouter(prefix="/api/terminals", tags=["terminals"])
MAX_INPUT_FRAME = 1 << 20  # one keystroke frame; pastes are far below it
CLOSE_NOT_FOUND, CLOSE_REPLACED, CLOSE_TOO_BIG = 4404, 4001, 1009


class TerminalCreate(Strict):
    agent: str | None = Field(None, min_length=1, max_length=200)
    run_id: str | None = Field(None, min_length=1, max_length=200)
    project: str | None = Field(None, min_length=1, max_length=200)
    backend: RequestedBackend | None = None
    cols: int = Field(80, ge=1, le=1000)
    rows: int = Field(24, ge=1, le=1000)


def manager(svc: Service) -> TerminalManager:
    found = svc.terminals
    if not found.on_close:
        found.on_close.append(lambda term, reason: _audit_close(svc, term, reason))
    return found


def _audit_close(svc: Service, term: Terminal, reason: str) -> None:
    if svc.db is None:
        return
    details: dict[str, Any] = {"reason": reason, "exit_code": term.exit_code, "backend": term.backend}
    if term.recorder is not None:
        details["recording"] = str(term.recorder.path)
    if "changes_lost" in term.pty.info:  # a Daytona sandbox gone before its changes were collected
        details["changes_lost"] = term.pty.info["changes_lost"]
    user_store.record(svc.database, term.actor, "terminal.close", term.id, details)


async def _workspace(svc: Service, request: Request, body: TerminalCreate) -> tuple[TerminalRequest, dict[str, Any]]:
    """Where the terminal runs and what it starts; 404 for runs/agents/projects the caller cannot see."""
    who = principal(request)
    req = TerminalRequest(owner=who.get("id"), user_trusted=bool(who.get("trusted", True)),
                          user_admin=bool(who.get("admin")), backend=body.backend,
                          cols=body.cols, rows=body.rows, actor=str(who.get("name") or who.get("id") or "?"),
                          terminal_id=new_id("term"))
    details: dict[str, Any] = {}
    if body.agent:
        req.agent = agent_store.get(svc.database, body.agent)
        details["agent"] = req.agent["name"]
    if body.run_id:
        run = run_store.get(svc.database, body.run_id, owner_filter(request))
        req.run_backend = run.get("backend")
        details["run_id"] = run["id"]
        req.workspace, req.workspace_id = _run_workspace(svc, run)
    elif body.project:
        req.workspace, req.workspace_id = await _project_workspace(svc, body.project, req)
        details["project"] = body.project
    elif req.agent is not None:
        req.workspace = agent_workspace(svc.settings, req.agent)
    if req.workspace is None:
        req.workspace = svc.settings.home / "terminals" / "scratch" / req.terminal_id
        req.scratch = True
    return req, details


def _run_workspace(svc: Service, run: dict[str, Any]) -> tuple[Path, str | None]:
    """The run's git worktree and workspace id (projects), else the directory its agent ran in.
    The worktree is re-made from the branch if it is missing (``Workspaces.prepare``)."""
    from agent_manager.workspaces import records as ws_records

    ws = ws_records.linked(svc.database, "runs", run["id"])
    if ws is not None:
        if ws["state"] != "open":
            raise Conflict(f"the workspace of run {run['id']} is {ws['state']}: there is nothing to open a "
                           "terminal in", {"state": ws["state"]})
        return Path(ws["path"]), str(ws["id"])
    with contextlib.suppress(AgentManagerError):
        agent = agent_store.get(svc.database, run["agent_id"])
        return agent_workspace(svc.settings, agent), None
    raise Conflict(f"the agent of run {run['id']} no longer exists: there is no workspace to open a terminal in")


async def _project_workspace(svc: Service, name: str, req: TerminalRequest) -> tuple[Path, str]:
    """A fresh workspace of the project (a worktree on branch ``am/<terminal id>``, from its
    default base): the user's own checkout is never touched. Committed when the terminal closes."""
    base = await svc.workspaces.check_base(name, None)
    ws = await svc.workspaces.create_from(base, "terminal", req.terminal_id, req.owner)
    return Path(ws["path"]), str(ws["id"])


@router.post("", status_code=201, response_model=api.Terminal, responses=api.errors(403, 404, 409, 429, 503))
async def open_terminal(body: TerminalCreate, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    mgr = manager(svc)
    req, details = await _workspace(svc, request, body)
    try:
        term = await mgr.open(req)
    except ExecutionError as exc:  # the backend could not give us a terminal: not our bug, say why
        raise ExecutorUnavailable(f"could not open the terminal: {exc.message}", exc.details) from exc
    term.actor = req.actor
    audit(request, "terminal.open", term.id, {**details, "backend": term.backend, "command": term.command,
                                              **({"recording": str(term.recorder.path)} if term.recorder else {})})
    return term.public()


@router.get("", response_model=list[api.Terminal], responses=api.errors(503))
async def list_terminals(request: Request, svc: Service = Depends(service)) -> list[dict[str, Any]]:
    return manager(svc).list(owner_filter(request))


@router.get("/{terminal_id}", response_model=api.Terminal, responses=api.errors(404, 503))
async def get_terminal(terminal_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    return manager(svc).get(terminal_id, owner_filter(request)).public()


@router.delete("/{terminal_id}", status_code=204, responses=api.errors(404, 503))
async def close_terminal(terminal_id: str, request: Request, svc: Service = Depends(service)) -> Response:
    mgr = manager(svc)
    term = mgr.get(terminal_id, owner_filter(request))
    await mgr.close(term, "closed by the user")
    return Response(status_code=204)


@router.websocket("/{terminal_id}/ws")
async def attach(websocket: WebSocket, terminal_id: str) -> None:
    svc: Service = websocket.app.state.service
    who = websocket.scope.get("state", {}).get("principal") or {"admin": True}
    try:
        mgr = manager(svc)
        term = mgr.get(terminal_id, None if who.get("admin") else who.get("id"))
    except AgentManagerError:  # accepted first, so the client can read the close code (a refused upgrade is a bare 403)
        await websocket.accept()
        await websocket.close(code=CLOSE_NOT_FOUND, reason="terminal not found")
        return
    await websocket.accept()
    client, backlog = mgr.attach(term)
    lock = asyncio.Lock()
    sender = asyncio.create_task(_send(websocket, lock, term, client, backlog))
    try:
        await _receive(websocket, lock, mgr, term)
    except WebSocketDisconnect:
        pass
    finally:
        mgr.detach(term, client)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, 5)
        if not sender.done():
            sender.cancel()


async def _send(websocket: WebSocket, lock: asyncio.Lock, term: Terminal, client: Client, backlog: bytes) -> None:
    """Scroll-back, then live bytes; when we end it, say why and close."""
    try:
        if backlog:
            async with lock:
                await websocket.send_bytes(backlog)
        while (data := await client.queue.get()) is not None:
            async with lock:
                await websocket.send_bytes(data)
        if websocket.application_state != WebSocketState.CONNECTED:
            return
        async with lock:
            if client.reason == "replaced":
                await websocket.close(code=CLOSE_REPLACED, reason="attached elsewhere")
            elif client.reason in ("exited", "closed"):
                await websocket.send_text(json.dumps({"exit": term.exit_code}))
                await websocket.close(code=1000)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away; the receive loop notices too


async def _receive(websocket: WebSocket, lock: asyncio.Lock, mgr: TerminalManager, term: Terminal) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > MAX_INPUT_FRAME:
                async with lock:
                    await websocket.close(code=CLOSE_TOO_BIG, reason="input frame too large")
                return
            if not term.ended.is_set():
                await mgr.type(term, data)  # waits while the program does not read: backpressure
        elif text is not None:
            reply = await _control(mgr, term, text)
            if reply is not None:
                async with lock:
                    await websocket.send_text(json.dumps(reply))


async def _control(mgr: TerminalManager, term: Terminal, text: str) -> dict[str, Any] | None:
    """A JSON control message; anything else gets an ``{"error"}`` frame and changes nothing."""
    try:
        message = json.loads(text) if len(text) <= 4096 else None
    except ValueError:
        message = None
    if not isinstance(message, dict):
        return {"error": 'text frames must be JSON objects: {"resize": [cols, rows]} or {"ping": ...}'}
    if "ping" in message:
        return {"pong": message["ping"]}
    size = message.get("resize")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        return {"error": "resize must be [cols, rows], two integers"}
    if min(size) < 1:
        return {"error": f"cannot resize to {size[0]}x{size[1]}: both must be at least 1"}
    await mgr.resize(term, size[0], size[1])  # above 1000 is clamped to 1000
    return None
