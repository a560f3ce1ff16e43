"""/api/orchestrations: run a plan, follow it live, cancel it, resume it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from agent_manager.errors import NotFound, ValidationFailed
from agent_manager.models import Event
from agent_manager.orchestration import plan as plans
from agent_manager.service import Service
from agent_manager.store import agents as agent_store
from agent_manager.store import orchestrations as store
from agent_manager.store import users as user_store
from agent_manager.web import plan_files, sse
from agent_manager.web import responses as api
from agent_manager.web.deps import owner_filter, principal, service
from agent_manager.workspaces import records as rec

router = APIRouter(prefix="/api/orchestrations", tags=["orchestrations"])
OrchestrationStatus = Literal["running", "succeeded", "failed", "cancelled", "interrupted"]


class OrchestrationInput(plans.PlanInput):
    """A plan, optionally on a project: then every step works on its own branch (DESIGN 3.7)."""

    project: str | None = Field(None, min_length=1, max_length=200)
    base: str | None = Field(None, min_length=1, max_length=250)


def with_workspaces(svc: Service, view: dict[str, Any]) -> dict[str, Any]:
    """The view with the result ``workspace`` (object or null) and each step's own."""
    ws_id = view.pop("workspace_id", None)
    ws = rec.find_by_id(svc.database, ws_id) if ws_id else None
    view["project"], view["workspace"] = (ws["project"] if ws else None), rec.public(ws)
    for step in view["steps"]:
        step["workspace"] = rec.public(rec.find(svc.database, "step", f"{view['id']}:{step['id']}")) if ws else None
    return view


@router.post("", status_code=201, response_model=api.Orchestration, response_model_exclude_unset=True,
             responses=api.errors(403, 404, 409, 422, 503))
async def create_orchestration(body: OrchestrationInput, request: Request,
                               svc: Service = Depends(service)) -> dict[str, Any]:
    """Validate the plan (422 naming the step on any problem) and start running it."""
    plan = plans.load(body.data(), agent_store.list_all(svc.database))
    if body.base and not body.project:
        raise ValidationFailed("base: only with a project", [{"field": "base", "message": "needs project"}])
    base = await svc.workspaces.check_base(body.project, body.base) if body.project else None
    who = principal(request)
    return with_workspaces(svc, svc.orchestrations.create(plan, owner=who.get("id"),
                                                   user_trusted=bool(who.get("trusted", True)), base=base,
                                                   user_admin=bool(who.get("admin"))))


@router.get("", response_model=api.OrchestrationPage)
async def list_orchestrations(request: Request, status: OrchestrationStatus | None = None,
                              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
                              svc: Service = Depends(service)) -> dict[str, Any]:
    items, total = await svc.database.read(store.search, owner=owner_filter(request), status=status,
                                           limit=limit, offset=offset)
    for item in items:
        item.pop("workspace_id", None)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{orch_id}", response_model=api.Orchestration, response_model_exclude_unset=True,
            responses=api.errors(404))
async def get_orchestration(orch_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    return with_workspaces(svc, store.view(svc.database, orch_id, owner_filter(request)))


@router.post("/{orch_id}/cancel", response_model=api.Orchestration, response_model_exclude_unset=True,
             responses=api.errors(404))
async def cancel_orchestration(orch_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    return with_workspaces(svc, await svc.orchestrations.cancel(orch_id, owner_filter(request)))


@router.post("/{orch_id}/resume", response_model=api.Orchestration, response_model_exclude_unset=True,
             responses=api.errors(404, 409))
async def resume_orchestration(orch_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    who = owner_rights(svc, request, orch_id)
    return with_workspaces(svc, svc.orchestrations.resume(orch_id, owner_filter(request),
                                                   user_trusted=bool(who.get("trusted", True)),
                                                   user_admin=bool(who.get("admin"))))


@router.post("/{orch_id}/steps/{step_id}/retry", response_model=api.Orchestration,
             response_model_exclude_unset=True, responses=api.errors(404, 409))
async def retry_step(orch_id: str, step_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    """Run one failed (or skipped/cancelled) step again, and the steps below it that it held back."""
    who = owner_rights(svc, request, orch_id)
    return with_workspaces(svc, svc.orchestrations.resume(orch_id, owner_filter(request), only=step_id,
                                                          user_trusted=bool(who.get("trusted", True)),
                                                          user_admin=bool(who.get("admin"))))


def owner_rights(svc: Service, request: Request, orch_id: str) -> dict[str, Any]:
    """Resumed and retried steps run with the rights of the plan's *owner*, whoever asks: an admin
    resuming a user's plan must not run that user's shell steps as the service's own OS user."""
    who = principal(request)
    owner = store.get_row(svc.database, orch_id, owner_filter(request))["owner"]
    if owner is not None and owner != who.get("id"):
        try:
            who = user_store.get(svc.database, owner)
        except NotFound:  # the owner was deleted: the least rights
            who = {"trusted": False, "admin": False}
    return who


@router.get("/{orch_id}/files", response_model=api.PlanFileList | api.PlanFileContent,
            responses={**api.DOWNLOAD, **api.errors(400, 403, 404, 413)})
async def orchestration_files(orch_id: str, request: Request, path: str = Query("", max_length=4096),
                              raw: bool = False, svc: Service = Depends(service)) -> Any:
    """The files the plan wrote in its workspace: without ``path`` a recursive list (bounded), with
    ``path`` that file (JSON, or its bytes as a download with ``raw=true``)."""
    orch = store.get_row(svc.database, orch_id, owner_filter(request))
    return plan_files.read(Path(orch["workspace"]), path, raw, svc.settings.home)


@router.get("/{orch_id}/events", response_model=list[Event], responses={**api.SSE, **api.errors(400, 404)})
async def orchestration_events(orch_id: str, request: Request, after: int | None = Query(None, ge=0, le=sse.MAX_SEQ),
                               limit: int = Query(1000, ge=1, le=10000), svc: Service = Depends(service)) -> Any:
    """SSE (Accept: text/event-stream) or a JSON list; ``?after=`` / ``Last-Event-ID`` resume."""
    store.get_row(svc.database, orch_id, owner_filter(request))
    start = sse.resume_point(request, after)
    log = svc.orchestrations.events
    if sse.wants_sse(request):
        return sse.stream(log, orch_id, start, lambda type_, seq: type_ == "orchestration.finished"
                          and _ends_stream(svc, orch_id, seq))
    return log.read(orch_id, start, limit)


def _ends_stream(svc: Service, orch_id: str, seq: int) -> bool:
    """An ``orchestration.finished`` ends the stream unless a resume came after it (a resumed
    orchestration has several)."""
    row = svc.database.one("SELECT 1 FROM orchestration_events WHERE orchestration_id = ? AND seq > ?"
                           " AND type = 'orchestration.resumed' LIMIT 1", (orch_id, seq))
    return row is None
