"""Answers about work on projects: workspaces and their review, orchestrations, plans."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from agent_manager.models import WorkspaceInfo
from agent_manager.orchestration.plan import Plan

# -- workspaces and projects (DESIGN 3.7) ----------------------------------------------------


class ProjectWorkspace(WorkspaceInfo):
    """An open workspace of a project, and what it belongs to."""

    kind: str = Field(..., description="run, conversation, step, orchestration or terminal")
    ref: str = Field(..., description="the id of the run, conversation, orchestration or terminal")
    step: str | None = Field(None, description="the step id (kind step only)")


class Project(BaseModel):
    id: str
    name: str
    path: str | None = Field(..., description="a local repository (admin-registered), or null")
    git_url: str | None
    default_base: str
    created_at: str
    open_workspaces: int = Field(..., description="open workspaces (only yours, unless admin)")


class ProjectDetail(Project):
    workspaces: list[ProjectWorkspace]


class DiffFile(BaseModel):
    path: str
    old_path: str | None = Field(None, description="renamed files only")
    status: Literal["added", "modified", "deleted", "renamed"]
    insertions: int
    deletions: int
    binary: bool


class WorkspaceDiff(BaseModel):
    workspace: WorkspaceInfo
    files: list[DiffFile]
    patch: str = Field(..., description="the unified diff, cut at 8 MiB")
    truncated: bool


class MergedWorkspace(WorkspaceInfo):
    merged_commit: str


# -- orchestrations (DESIGN 3.4) --------------------------------------------------------------

StepStatus = Literal["pending", "running", "succeeded", "failed", "cancelled", "skipped"]
OrchestrationStatus = Literal["running", "succeeded", "failed", "cancelled", "interrupted"]


class StepCounts(BaseModel):
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    skipped: int
    total: int


class StepState(BaseModel):
    id: str
    status: StepStatus
    run_id: str | None
    backend: str | None
    route_reason: str | None
    attempts: int
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    output: str | None
    error: str | None
    action: Literal["agent", "write_file", "shell"] | None
    agent: str | None
    depends_on: list[str]
    workspace: WorkspaceInfo | None = Field(..., description="the step's own branch (plans on a project)")


class OrchestrationSummary(BaseModel):
    id: str
    name: str
    status: OrchestrationStatus
    error: str | None
    max_parallel: int
    owner: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    counts: StepCounts


class OrchestrationPage(BaseModel):
    items: list[OrchestrationSummary]
    total: int
    limit: int
    offset: int


class Orchestration(OrchestrationSummary):
    workspace_dir: str = Field(..., description="where write_file steps write (GET …/files reads it)")
    plan: Plan = Field(..., description="the plan as submitted, without its default values")
    project: str | None
    workspace: WorkspaceInfo | None = Field(..., description="the result branch (plans on a project)")
    steps: list[StepState]


class PlanFile(BaseModel):
    path: str
    type: Literal["file", "symlink", "other"]
    size: int
    modified: str


class PlanFileList(BaseModel):
    type: Literal["list"]
    files: list[PlanFile]
    cap: int = Field(..., description="at most this many files are listed")


class PlanFileContent(BaseModel):
    type: Literal["file"]
    path: str
    size: int
    encoding: Literal["utf-8", "base64"]
    content: str


# -- plans -------------------------------------------------------------------------------------


class PlanDraft(BaseModel):
    plan: Plan
    raw: str
    run_ids: list[str]


class PlanIssue(BaseModel):
    step: str | None = Field(..., description="the step it is about; null for the plan itself")
    field: str | None
    message: str


class PlanValidation(BaseModel):
    valid: bool
    errors: list[PlanIssue]
    plan: Plan | None = Field(..., description="the plan without defaults, when it could be read")
    layers: list[list[str]] = Field(..., description="step ids that can run together, in order (valid plans)")
    yaml: str | None = Field(..., description="the plan as YAML (valid plans)")


class SavedPlan(BaseModel):
    id: str
    name: str
    plan: Plan
    steps: int
    owner: str | None
    created_at: str
    updated_at: str


class JsonSchemaDocument(BaseModel, extra="allow"):
    """A JSON Schema (draft 2020-12) document: open by nature."""

    schema_: str = Field(..., alias="$schema")
    title: str
    type: Literal["object"]
    properties: dict[str, Any]
