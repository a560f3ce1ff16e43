"""/api/runs: start runs, list and search them, follow their events or raw output, cancel them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from agent_manager.errors import ValidationFailed
from agent_manager.executors.base import Resources
from agent_manager.models import NO_NUL, TERMINAL_STATUSES, Event, Run, RunCreate, RunPage, RunStatus
from agent_manager.service import Service
from agent_manager.store import agents as agent_store
from agent_manager.store import runs as run_store
from agent_manager.web import raw_output, sse
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, owner_filter, principal, require_admin, service
from agent_manager.workspaces import records as rec

router = APIRouter(prefix="/api/runs", tags=["runs"])
RUN_TERMINAL = frozenset({"run.finished"})
SMALL_HISTORY = 20_000  # runs (by rowid) up to which a first pages' list is read on the loop
SMALL_PAGE_END = 500  # ... if it ends within the first this many runs


def check_resources(request: Request, svc: Service, resources: Resources) -> None:
    """Non-admin users may not ask for more than the settings allow (the sandbox enforces what
    is asked, so an uncapped ask would lift its limits)."""
    if principal(request).get("admin"):
        return
    settings = svc.settings
    for name, value, cap, setting in (("cpu", resources.cpu, settings.user_max_cpu, "user_max_cpu"),
                                      ("memory_mb", resources.memory_mb, settings.user_max_memory_mb,
                                       "user_max_memory_mb")):
        if value is not None and value > cap:
            raise ValidationFailed(f"resources.{name}: {value:g} is more than the {cap:g} allowed for users "
                                   f"(setting {setting})",
                                   [{"field": f"resources.{name}", "in": "body", "limit": cap,
                                     "message": f"at most {cap:g}"}])


@router.post("", response_model=Run, status_code=201, responses=api.errors(403, 404, 409, 413, 422, 503))
async def create_run(body: RunCreate, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    # A few submissions per turn of the loop, with the spawns and finishes (pacing.py): 200 runs
    # posted at once otherwise held every other request for a whole batch of them.
    await svc.runs.pacer.turn()
    resources = Resources(cpu=body.resources.cpu, memory_mb=body.resources.memory_mb) if body.resources else None
    if resources is not None:
        check_resources(request, svc, resources)
    if body.base and not body.project:
        raise ValidationFailed("base: only with a project", [{"field": "base", "message": "needs project"}])
    base = None
    if body.project:
        if body.conversation_id:
            raise ValidationFailed("project: a conversation's turns use the conversation's project",
                                   [{"field": "project", "message": "not with conversation_id"}])
        agent_store.get(svc.database, body.agent)  # 404 for an unknown agent before any git work
        base = await svc.workspaces.check_base(body.project, body.base)
    run = svc.start_run(principal(request), body.agent, body.prompt, conversation_id=body.conversation_id,
                        backend=body.backend, timeout_s=body.timeout_s, resources=resources, new_workspace=base)
    return rec.attach(svc.database, run)


@router.get("", response_model=RunPage, responses=api.errors(404))
async def list_runs(request: Request, agent: str | None = None, status: RunStatus | None = None,
              q: str | None = Query(None, max_length=500, pattern=NO_NUL), limit: int = Query(50, ge=1, le=500),
              offset: int = Query(0, ge=0), svc: Service = Depends(service)) -> dict[str, Any]:
    agent_id = agent_store.get(svc.database, agent)["id"] if agent else None
    query: dict[str, Any] = {"agent_id": agent_id, "status": status, "q": q, "owner": owner_filter(request),
                             "limit": limit, "offset": offset}
    if not q and offset + limit <= SMALL_PAGE_END and run_store.history_size(svc.database) <= SMALL_HISTORY:
        # A small history's page and count cost well under a millisecond here (a run row is
        # small since 0012), while the read pool's hop waits two turns of the loop: 20 ms each
        # while 200 runs stream.
        items, total = run_store.search(svc.database, **query)
    else:  # in the read pool: a count or a full-text match over a big history must not stall the loop
        items, total = await svc.database.read(run_store.search, **query)
    return {"items": [rec.attach(svc.database, r) for r in items], "total": total, "limit": limit, "offset": offset}


class PruneRequest(BaseModel):
    older_than_days: float = Field(..., ge=0, le=100_000, allow_inf_nan=False)


@router.post("/prune", dependencies=[Depends(require_admin)], response_model=api.Pruned,
             responses=api.errors(403))
async def prune_runs(body: PruneRequest, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    """Delete finished runs (and their event logs) older than ``older_than_days``."""
    deleted = svc.runs.prune(body.older_than_days)
    audit(request, "runs.prune", None, {"older_than_days": body.older_than_days, "deleted": deleted})
    return {"deleted": deleted, "older_than_days": body.older_than_days}


@router.get("/{run_id}", response_model=Run, responses=api.errors(404))
async def get_run(run_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    return rec.attach(svc.database, run_store.get(svc.database, run_id, owner_filter(request)))


@router.post("/{run_id}/cancel", response_model=Run, responses=api.errors(404))
async def cancel_run(run_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    run = await svc.runs.cancel(run_id, owner_filter(request))
    audit(request, "run.cancel", run_id, {"agent": run["agent_name"], "status": run["status"]})
    return rec.attach(svc.database, run)


@router.get("/{run_id}/events", response_model=list[Event],
            responses={**api.SSE, 204: {"description": "SSE resumed at or past a finished run's last event: "
                                        "nothing more will come"}, **api.errors(400, 404)})
async def run_events(run_id: str, request: Request, after: int | None = Query(None, ge=0, le=sse.MAX_SEQ),
               limit: int = Query(1000, ge=1, le=10000), svc: Service = Depends(service)) -> Any:
    run_store.get(svc.database, run_id, owner_filter(request))
    start = sse.resume_point(request, after)
    if sse.wants_sse(request):
        return sse.stream(svc.runs.events, run_id, start, lambda type_, _seq: type_ in RUN_TERMINAL,
                          lambda: _ended(svc, run_id))
    return svc.runs.events.read(run_id, start, limit)


def _ended(svc: Service, run_id: str) -> bool:
    """The run has ended (or is gone): its final row is committed with its last event."""
    row = svc.database.one("SELECT status FROM runs WHERE id = ?", (run_id,))
    return row is None or row["status"] in TERMINAL_STATUSES


@router.get("/{run_id}/output", response_class=Response, responses={**api.RAW_OUTPUT, **api.errors(404)})
async def run_output(run_id: str, request: Request, stream: Literal["stdout", "stderr"] | None = None,
                     after: int = Query(0, ge=0, le=sse.MAX_SEQ), offset: int = Query(0, ge=0, le=sse.MAX_SEQ),
                     svc: Service = Depends(service)) -> Response:
    """The run's output as plain text, followed live until the run finishes (``curl -N``).
    ``after``: start after that event seq; ``offset``: skip that many bytes (resume a download)."""
    run = run_store.get(svc.database, run_id, owner_filter(request))
    if run["status"] in TERMINAL_STATUSES and not svc.runs.events.stored_after(run_id, after):
        return Response(b"", media_type="text/plain; charset=utf-8")  # resumed at or past the end
    return raw_output.response(svc.database, svc.runs.events, run_id, after, stream, offset)
