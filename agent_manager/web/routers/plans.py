"""/api/plans: draft a plan from a goal, publish the plan schema, validate a plan without running it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_manager.models import NAME_RE
from agent_manager.orchestration import plan as plans
from agent_manager.orchestration import planner
from agent_manager.service import Service
from agent_manager.store import agents as agent_store
from agent_manager.store import saved_plans
from agent_manager.web import responses as api
from agent_manager.web.deps import owner_filter, principal, service

router = APIRouter(prefix="/api/plans", tags=["plans"])
DISCONNECT_POLL_S = 0.5


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str = Field(..., min_length=1, max_length=100_000)
    planner: str | None = Field(None, description="agent name or id; default: the default_planner setting")

    @field_validator("goal")
    @classmethod
    def _goal(cls, value: str) -> str:
        if not value.strip() or "\x00" in value:
            raise ValueError("must be non-empty text without NUL bytes")
        return value


@router.post("", response_model=api.PlanDraft, response_model_exclude_none=True, status_code=201,
             responses=api.errors(400, 403, 404, 422, 499, 503))
async def create_plan(body: PlanRequest, request: Request,
                      svc: Service = Depends(service)) -> api.PlanDraft | Response:
    """Ask the planner agent for a draft plan. Nothing runs: review it, then POST /api/orchestrations."""
    who = principal(request)
    work = asyncio.ensure_future(planner.draft(svc.database, svc.settings, svc.runs, body.goal, body.planner,
                                               owner=who.get("id"), user_trusted=bool(who.get("trusted", True)),
                                               user_admin=bool(who.get("admin"))))
    try:
        # The asker may leave (Ctrl-C on `agent-manager plan`, a closed tab): then the planner run
        # is cancelled instead of running its whole timeout for nobody.
        while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
            if await request.is_disconnected():
                break
    finally:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    draft = work.result()
    return api.PlanDraft(plan=draft.plan, raw=draft.raw, run_ids=draft.run_ids)


@router.get("/schema", response_model=api.JsonSchemaDocument)
async def plan_schema() -> dict[str, Any]:
    """The JSON Schema of a plan (DESIGN 3.4)."""
    return plans.schema()


@router.post("/validate", response_model=api.PlanValidation, response_model_exclude_unset=True)
async def validate_plan(body: plans.PlanInput, svc: Service = Depends(service)) -> dict[str, Any]:
    """Every problem of a plan, each naming its step; with the DAG's layers when it is valid."""
    try:
        data = body.data()
    except plans.PlanInvalid as exc:
        return {"valid": False, "errors": [i.to_json() for i in exc.issues], "plan": None, "layers": [],
                "yaml": None}
    plan, issues = plans.check(data, agent_store.list_all(svc.database))
    valid = plan is not None and not issues
    return {"valid": valid, "errors": [i.to_json() for i in issues],
            "plan": plans.to_data(plan) if plan is not None else None,
            "layers": plans.layers(plan) if plan is not None and valid else [],
            "yaml": plans.to_yaml(plan) if plan is not None and valid else None}


class SavedPlanInput(plans.PlanInput):
    """A plan to keep under ``name`` (saving the same name again replaces it)."""

    name: str = Field(..., pattern=NAME_RE)


@router.get("/saved", response_model=list[api.SavedPlan], response_model_exclude_unset=True)
async def list_saved(request: Request, svc: Service = Depends(service)) -> list[dict[str, Any]]:
    """Your saved plans (the admin's list has everyone's), by name."""
    return saved_plans.list_all(svc.database, owner_filter(request))


@router.post("/saved", status_code=201, response_model=api.SavedPlan, response_model_exclude_unset=True,
             responses={200: {"model": api.SavedPlan, "description": "Replaced the plan of that name"},
                        **api.errors(422)})
async def save_plan(body: SavedPlanInput, request: Request, response: Response,
                    svc: Service = Depends(service)) -> dict[str, Any]:
    """Validate the plan (422 naming the step) and keep it; 200 when it replaced one of that name."""
    plan = plans.load(body.data(), agent_store.list_all(svc.database))
    saved, created = saved_plans.save(svc.database, body.name, plans.to_data(plan), principal(request).get("id"))
    if not created:
        response.status_code = 200
    return saved


@router.get("/saved/{plan_id}", response_model=api.SavedPlan, response_model_exclude_unset=True,
            responses=api.errors(404))
async def get_saved(plan_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    return saved_plans.get(svc.database, plan_id, owner_filter(request))


@router.delete("/saved/{plan_id}", status_code=204, responses=api.errors(404))
async def delete_saved(plan_id: str, request: Request, svc: Service = Depends(service)) -> Response:
    saved_plans.delete(svc.database, plan_id, owner_filter(request))
    return Response(status_code=204)
