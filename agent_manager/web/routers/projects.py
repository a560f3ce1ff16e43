"""/api/projects: git repositories agents work on (DESIGN 3.7).

Registering a local path is the admin's (it exposes a directory of this host to every run on
the project); users may add https:// repositories and use every project.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from agent_manager.models import ProjectCreate
from agent_manager.service import Service
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, owner_filter, principal, require_admin, service
from agent_manager.workspaces import records as rec
from agent_manager.workspaces.projects import shown_url

router = APIRouter(prefix="/api/projects", tags=["projects"])


def view(svc: Service, project: dict[str, Any], with_workspaces: bool = False,
         owner: str | None = None) -> dict[str, Any]:
    """A project; with its open workspaces (only the caller's own, unless admin)."""
    spaces = [ws for ws in rec.of_project(svc.database, project["id"], "open")
              if owner is None or ws["owner"] == owner]
    out = {k: project[k] for k in ("id", "name", "path", "default_base", "created_at")}
    out["git_url"] = shown_url(project["git_url"])
    out["open_workspaces"] = len(spaces)
    if with_workspaces:
        out["workspaces"] = [{**(rec.public(ws) or {}), "kind": ws["kind"], "ref": ws["owner_ref"].split(":")[0],
                              **({"step": ws["owner_ref"].split(":", 1)[1]} if ws["kind"] == "step" else {})}
                             for ws in spaces]
    return out


@router.get("", response_model=list[api.Project])
async def list_projects(request: Request, svc: Service = Depends(service)) -> list[dict[str, Any]]:
    return [view(svc, p, owner=owner_filter(request)) for p in rec.projects(svc.database)]


@router.post("", status_code=201, response_model=api.Project, responses=api.errors(400, 403, 409, 422))
async def create_project(body: ProjectCreate, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    project = await svc.workspaces.register(principal(request), body.name, path=body.path, git_url=body.git_url,
                                             base=body.base)
    audit(request, "project.create", project["name"], {"path": project["path"],
                                                        "git_url": shown_url(project["git_url"])})
    return view(svc, project)


@router.get("/{ref}", response_model=api.ProjectDetail, response_model_exclude_unset=True,
            responses=api.errors(404))
async def get_project(ref: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    return view(svc, rec.project(svc.database, ref), with_workspaces=True, owner=owner_filter(request))


@router.delete("/{ref}", status_code=204, dependencies=[Depends(require_admin)], responses=api.errors(403, 404, 409))
async def delete_project(ref: str, request: Request, svc: Service = Depends(service)) -> Response:
    await svc.workspaces.remove_project(ref)
    audit(request, "project.delete", ref)
    return Response(status_code=204)
