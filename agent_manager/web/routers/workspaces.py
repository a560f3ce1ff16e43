"""Review endpoints of a workspace, the same under runs, conversations and orchestrations:
``GET …/{id}/diff`` (JSON, or the patch alone with ``Accept: text/x-diff``), ``POST …/{id}/merge``
and ``POST …/{id}/discard`` (DESIGN 3.7). Ownership is checked through the owning resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from agent_manager.errors import Forbidden, NotFound
from agent_manager.models import MergeRequest, WorkspaceInfo
from agent_manager.service import Service
from agent_manager.store import conversations as conv_store
from agent_manager.store import orchestrations as orch_store
from agent_manager.store import runs as run_store
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, owner_filter, principal, service
from agent_manager.workspaces import records as rec
from agent_manager.workspaces.workspace import commit_message


def _run_title(svc: Service, run_id: str, owner: str | None) -> str:
    return commit_message(run_store.get(svc.database, run_id, owner)["prompt"])


def _conv_title(svc: Service, conv_id: str, owner: str | None) -> str:
    conv = conv_store.get(svc.database, conv_id, owner)
    return commit_message(conv["title"] or "Conversation " + conv_id)


def _orch_title(svc: Service, orch_id: str, owner: str | None) -> str:
    return commit_message("Orchestration " + orch_store.get_row(svc.database, orch_id, owner)["name"])


RESOURCES: dict[str, tuple[str, str, Callable[[Service, str, str | None], str]]] = {
    "runs": ("run", "runs", _run_title),
    "conversations": ("conversation", "conversations", _conv_title),
    "orchestrations": ("orchestration", "orchestrations", _orch_title),
}


def _router(resource: str) -> APIRouter:
    noun, table, title_of = RESOURCES[resource]
    router = APIRouter(prefix=f"/api/{resource}", tags=[resource])

    def target(svc: Service, request: Request, item_id: str) -> tuple[dict[str, Any], str]:
        title = title_of(svc, item_id, owner_filter(request))  # 404 for someone else's
        ws = rec.linked(svc.database, table, item_id)
        if ws is None:
            raise NotFound(f"{noun} {item_id!r} has no workspace: it was not started on a project")
        return ws, title

    @router.get("/{item_id}/diff", response_model=api.WorkspaceDiff, response_model_exclude_unset=True,
                responses={**api.PATCH, **api.errors(404)}, name=f"{noun}_diff")
    async def diff(item_id: str, request: Request, format: str | None = Query(None, pattern="^(json|patch)$"),
                   svc: Service = Depends(service)) -> Any:
        ws, _ = target(svc, request, item_id)
        if format == "patch" or (format is None and "text/x-diff" in request.headers.get("accept", "")):
            text = await svc.workspaces.patch(ws["id"])
            name = ws["branch"].replace("/", "-") + ".patch"
            return Response(text, media_type="text/x-diff; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
        return await svc.workspaces.diff(ws["id"])

    @router.post("/{item_id}/merge", name=f"{noun}_merge", response_model=api.MergedWorkspace,
                 responses=api.errors(403, 404, 409))
    async def merge(item_id: str, request: Request, body: MergeRequest | None = Body(None),
                    svc: Service = Depends(service)) -> dict[str, Any]:
        ws, title = target(svc, request, item_id)
        if not principal(request).get("trusted", True) and rec.project(svc.database, ws["project_id"])["path"]:
            # Merging writes the branch into a checkout on this host (the admin's repository):
            # an untrusted user's isolated run must not land files there unreviewed.
            raise Forbidden("an untrusted user may not merge into a project on this host's file system; "
                            "download the patch (GET …/diff?format=patch) and ask a trusted user to apply it")
        strategy = (body or MergeRequest()).strategy
        merged = await svc.workspaces.merge(ws["id"], strategy, title)
        audit(request, f"{noun}.merge", item_id, {"branch": ws["branch"], "strategy": strategy,
                                                  "commit": merged["merged_commit"]})
        return {**(rec.public(merged) or {}), "merged_commit": merged["merged_commit"]}

    @router.post("/{item_id}/discard", name=f"{noun}_discard", response_model=WorkspaceInfo,
                 responses=api.errors(404, 409))
    async def discard(item_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
        ws, _ = target(svc, request, item_id)
        done = await svc.workspaces.discard(ws["id"])
        audit(request, f"{noun}.discard", item_id, {"branch": ws["branch"]})
        return rec.public(done) or {}

    return router


routers = [_router(name) for name in RESOURCES]
