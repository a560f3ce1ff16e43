"""/api/sandboxes: what the backends are running, and sweeping what they left behind."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from agent_manager.errors import ExecutorUnavailable
from agent_manager.service import Service
from agent_manager.web import responses as api
from agent_manager.web.deps import owner_filter, require_admin, service

router = APIRouter(prefix="/api/sandboxes", tags=["sandboxes"])


def _daytona(svc: Service) -> Any:
    from agent_manager.executors import daytona

    if not svc.settings.daytona_configured:
        raise ExecutorUnavailable("Daytona is not configured: set DAYTONA_API_KEY or the daytona_api_key setting")
    return daytona


def _in_use(svc: Service) -> set[str]:
    executor = svc.executors.get("daytona")
    keep_ids = getattr(executor, "keep_ids", None)
    return set(keep_ids()) if keep_ids is not None else set()


def _owned_runs(svc: Service, owner: str | None, run_ids: set[str]) -> set[str]:
    """Which of ``run_ids`` ``owner`` may see (all of them for the admin, ``owner=None``)."""
    if owner is None or not run_ids:
        return run_ids
    marks = ", ".join("?" for _ in run_ids)
    rows = svc.database.all(f"SELECT id FROM runs WHERE owner = ? AND id IN ({marks})", (owner, *sorted(run_ids)))
    return {row["id"] for row in rows}


@router.get("", response_model=list[api.Sandbox], response_model_exclude_unset=True, responses=api.errors(503))
async def list_sandboxes(request: Request, svc: Service = Depends(service)) -> list[dict[str, Any]]:
    """Local bubblewrap sandboxes of live runs, and every Daytona sandbox labelled by Agent Manager.
    A user sees only those of their own runs (no other run ids, host pids or pool sandboxes)."""
    owner = owner_filter(request)
    found: list[dict[str, Any]] = []
    local = {run_id: execution.info for run_id, execution in svc.runs.executions().items()
             if execution.info.get("sandbox") == "bwrap"}
    visible = _owned_runs(svc, owner, set(local))
    for run_id, info in local.items():
        if run_id in visible:
            found.append({"backend": "sandbox", "id": info.get("pid", ""), "run": run_id, "state": "running"})
    if svc.settings.daytona_configured:
        daytona = _daytona(svc)
        keep = _in_use(svc)
        items = await daytona.list_sandboxes(svc.settings)
        visible = _owned_runs(svc, owner, {item["run"] for item in items if item.get("run")})
        for item in items:
            if owner is None or item.get("run") in visible:
                found.append({"backend": "daytona", **item, "in_use": item["id"] in keep,
                              "this_instance": item["instance"] == svc.prefix})
    return found


@router.post("/gc", dependencies=[Depends(require_admin)], response_model=api.Swept, responses=api.errors(403, 503))
async def gc(all_instances: bool = Query(False), svc: Service = Depends(service)) -> dict[str, int]:
    """Delete labelled Daytona sandboxes no live run or warm pool of this service uses."""
    daytona = _daytona(svc)
    keep = _in_use(svc)
    deleted = await daytona.sweep(svc.settings, keep=keep, instance=None if all_instances else svc.prefix)
    return {"deleted": deleted}
