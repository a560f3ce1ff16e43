"""/api/sandboxes: what the isolated backends are running, and sweeping what they left behind.

Nothing here names a backend: sandboxes on this host are the live runs of isolated host
backends; a backend with sandboxes of its own elsewhere (a cloud) lists and sweeps them
through its optional ``list_sandboxes`` / ``sweep_sandboxes`` methods (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request

from agent_manager import plugins
from agent_manager.errors import AgentManagerError, ExecutorUnavailable
from agent_manager.plugins import HOST, ISOLATED
from agent_manager.service import Service
from agent_manager.web import responses as api
from agent_manager.web.deps import owner_filter, require_admin, service

router = APIRouter(prefix="/api/sandboxes", tags=["sandboxes"])
T = TypeVar("T")


async def _ask(name: str, what: str, call: Awaitable[T]) -> T:
    """A backend's own answer, or a 503 naming it: an unreachable cloud or a plugin's bug is the
    backend's failure, not a 500 of the service (its reason is masked like every error answer)."""
    try:
        return await call
    except AgentManagerError as exc:
        if exc.status < 500 or isinstance(exc, ExecutorUnavailable):
            raise
        raise ExecutorUnavailable(f"the {name} backend could not {what}: {exc.message}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever a plugin or its SDK raises
        raise ExecutorUnavailable(f"the {name} backend could not {what}: {type(exc).__name__}: {exc}") from exc


def _owned_runs(svc: Service, owner: str | None, run_ids: set[str]) -> set[str]:
    """Which of ``run_ids`` ``owner`` may see (all of them for the admin, ``owner=None``)."""
    if owner is None or not run_ids:
        return run_ids
    marks = ", ".join("?" for _ in run_ids)
    rows = svc.database.all(f"SELECT id FROM runs WHERE owner = ? AND id IN ({marks})", (owner, *sorted(run_ids)))
    return {row["id"] for row in rows}


@router.get("", response_model=list[api.Sandbox], response_model_exclude_unset=True, responses=api.errors(503))
async def list_sandboxes(request: Request, svc: Service = Depends(service)) -> list[dict[str, Any]]:
    """Sandboxes of live runs on this host, and every remote sandbox labelled by Agent Manager.
    A user sees only those of their own runs (no other run ids, host pids or pool sandboxes)."""
    owner = owner_filter(request)
    found: list[dict[str, Any]] = []
    started = svc.runs.started_on()
    local = {run_id: (started[run_id], execution.info) for run_id, execution in svc.runs.executions().items()
             if run_id in started and {HOST, ISOLATED} <= plugins.capabilities(started[run_id])}
    visible = _owned_runs(svc, owner, set(local))
    for run_id, (backend, info) in local.items():
        if run_id in visible:
            found.append({"backend": backend, "id": info.get("pid", ""), "run": run_id, "state": "running",
                          "in_use": True})
    for name, executor in list(svc.executors.items()):
        listing = getattr(executor, "list_sandboxes", None)
        if listing is None:
            continue
        items = await _ask(name, "list its sandboxes", listing())
        visible = _owned_runs(svc, owner, {item["run"] for item in items if item.get("run")})
        # The backend's own name last: a plugin's listing cannot claim another backend's sandboxes.
        found += [{**item, "backend": name} for item in items if owner is None or item.get("run") in visible]
    return found


@router.post("/gc", dependencies=[Depends(require_admin)], response_model=api.Swept, responses=api.errors(403, 503))
async def gc(all_instances: bool = Query(False), svc: Service = Depends(service)) -> dict[str, int]:
    """Delete labelled remote sandboxes no live run or warm pool of this service uses."""
    sweepers = [(name, sweep) for name, executor in list(svc.executors.items())
                if (sweep := getattr(executor, "sweep_sandboxes", None)) is not None]
    deleted, problems = 0, []
    for name, sweep in sweepers:
        try:
            deleted += await _ask(name, "sweep its sandboxes", sweep(all_instances))
        except ExecutorUnavailable as exc:
            problems.append(f"{name}: {exc.message}")
    if problems and len(problems) == len(sweepers):
        raise ExecutorUnavailable("no backend could sweep its sandboxes: " + "; ".join(problems))
    if not sweepers:
        raise ExecutorUnavailable("no installed backend keeps sandboxes to sweep")
    return {"deleted": deleted}
