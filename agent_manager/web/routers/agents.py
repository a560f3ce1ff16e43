"""/api/agents: register and manage agent CLIs."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from agent_manager import plugins
from agent_manager.errors import ValidationFailed
from agent_manager.models import MASK, Agent, AgentCreate, AgentUpdate, mask_env
from agent_manager.run_request import working_dir_problem
from agent_manager.service import Service
from agent_manager.store import agents as agent_store
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, require_admin, service

router = APIRouter(prefix="/api/agents", tags=["agents"])


def present(agent: dict[str, Any]) -> Agent:
    kind = plugins.kinds().get(agent["kind"])
    hint = kind.install_hint if kind is not None else f"the agent kind {agent['kind']!r} is not installed"
    return Agent(**{**agent, "env": mask_env(agent["env"]), "api_key": MASK if agent.get("api_key") else None,
                    "available": kind is not None and shutil.which(agent["command"]) is not None,
                    "install_hint": hint})


def _check_working_dir(path: str | None) -> None:
    """A missing working directory is refused, never created (as root that could be anywhere)."""
    if (problem := working_dir_problem(path)) is not None:
        raise ValidationFailed(problem, [{"field": "working_dir", "message": problem}])


def _fields(body: AgentCreate) -> dict[str, Any]:
    fields = body.model_dump()
    _check_working_dir(fields.get("working_dir"))
    if not fields.get("command"):
        default = plugins.get_kind(body.kind).default_command
        if not default:
            raise ValidationFailed(f"command: a {body.kind} agent needs a command", [{"field": "command",
                                   "message": f"required for {body.kind} agents"}])
        fields["command"] = default
    return fields


@router.get("", response_model=list[Agent])
async def list_agents(svc: Service = Depends(service)) -> list[Agent]:
    return [present(a) for a in agent_store.list_all(svc.database)]


@router.post("", response_model=Agent, status_code=201, dependencies=[Depends(require_admin)],
             responses=api.errors(403, 409, 422))
async def create_agent(body: AgentCreate, request: Request, svc: Service = Depends(service)) -> Agent:
    agent = agent_store.create(svc.database, _fields(body))
    audit(request, "agent.create", agent["id"], {"name": agent["name"], "kind": agent["kind"]})
    return present(agent)


@router.get("/{ref}", response_model=Agent, responses=api.errors(404))
async def get_agent(ref: str, svc: Service = Depends(service)) -> Agent:
    return present(agent_store.get(svc.database, ref))


@router.patch("/{ref}", response_model=Agent, dependencies=[Depends(require_admin)],
              responses=api.errors(403, 404, 409, 422))
async def update_agent(ref: str, body: AgentUpdate, request: Request, svc: Service = Depends(service)) -> Agent:
    current = agent_store.get(svc.database, ref)
    changes = body.model_dump(exclude_unset=True)
    if "command" in changes and changes["command"] is None:
        raise ValidationFailed("command: must not be null", [{"field": "command", "message": "must not be null"}])
    for key in ("name", "kind", "trusted", "timeout_s", "network", "args", "env"):
        if key in changes and changes[key] is None:
            raise ValidationFailed(f"{key}: must not be null", [{"field": key, "message": "must not be null"}])
    if changes.get("working_dir"):
        _check_working_dir(changes["working_dir"])
    if "env" in changes:  # a masked value sent back means "keep the stored secret"
        changes["env"] = {k: (current["env"].get(k, "") if v == MASK else v) for k, v in changes["env"].items()}
    if changes.get("api_key") == MASK:  # the masked key sent back: keep the stored one
        del changes["api_key"]
    updated = agent_store.update(svc.database, ref, changes)
    audit(request, "agent.update", updated["id"], {"name": updated["name"], "fields": sorted(changes)})
    return present(updated)


@router.delete("/{ref}", status_code=204, dependencies=[Depends(require_admin)], responses=api.errors(403, 404))
async def delete_agent(ref: str, request: Request, svc: Service = Depends(service)) -> Response:
    agent = agent_store.get(svc.database, ref)
    agent_store.delete(svc.database, ref)
    audit(request, "agent.delete", agent["id"], {"name": agent["name"]})
    return Response(status_code=204)
