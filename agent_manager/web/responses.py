"""What the HTTP API answers: the error shape, the non-JSON media types, and the response
models of the routes whose data is not a model of ``agent_manager.models``.

Why a module of its own: routers then declare their answer with one decorator argument
(``response_model=``/``responses=``) and ``/openapi.json`` describes every answer, which
``tests/test_schema.py`` checks against a real server. A route whose code returns a
different shape fails that test (FastAPI validates the return value against the model).

Conventions:
- a field that is always present is required (``None`` written out when nullable);
- a key the code only sometimes sends has a default, and its route uses
  ``response_model_exclude_unset=True``, so the answer keeps exactly the keys the code sent;
- models keep pydantic's default of ignoring unknown keys: what is not declared here is
  never sent (a stored column added later stays private until it is declared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field, SecretStr, create_model

from agent_manager.models import WorkspaceInfo
from agent_manager.orchestration.plan import Plan
from agent_manager.settings import Settings
from agent_manager.web.auth import OPEN_PATHS

# -- errors ------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(..., description="stable, e.g. not_found, validation_failed, conflict, forbidden")
    message: str = Field(..., description="for people; names the field or the limit")
    details: list[dict[str, Any]] | dict[str, Any] | None = Field(
        ..., description="per-field problems ([{field, in?, message?}]; plan issues add step) or an object "
                         "such as {size, limit}; null when there is nothing more to say")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


ERROR_TEXT = {
    400: "Bad request (bad_request): a malformed header, path or body",
    401: "Not authenticated (unauthorized)",
    403: "Forbidden (forbidden): not the admin, a refused Host or Origin, or an isolation rule",
    404: "Not found (not_found), or not yours",
    409: "Conflict (conflict): the resource is in a state that does not allow this",
    413: "Too large (too_large): a body over max_request_bytes, or a file over its limit",
    422: "Invalid input (validation_failed, invalid_plan): details name each field",
    429: "Too many (too_many_requests): wrong tokens from this address, or a limit reached",
    499: "The client closed the request; nobody reads this answer (no body)",
    503: "A backend is unavailable (executor_unavailable), e.g. Daytona not configured or unreachable",
    507: "The disk is full (insufficient_storage); nothing was written",
}
# What the middleware can answer on any operation, before a route runs (web.auth, web.limits).
MIDDLEWARE_STATUSES = (400, 401, 403, 413, 429)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the errors a route itself can answer (the middleware's are added
    to every operation by ``install``)."""
    return {status: {"description": ERROR_TEXT[status], **({"model": ErrorResponse} if status != 499 else {})}
            for status in statuses}


def text(media_type: str, description: str, status: int = 200, **extra: Any) -> dict[int | str, dict[str, Any]]:
    """A non-JSON answer: a string body of ``media_type``."""
    return {status: {"description": description,
                     "content": {media_type: {"schema": {"type": "string", **extra}}}}}


SSE = text("text/event-stream", "The events as JSON; with Accept: text/event-stream, server-sent events: `id: <seq>`, "
           "`event: <type>`, `data: <JSON with at>`; resumes after ?after= or Last-Event-ID")
DOWNLOAD = text("application/octet-stream", "With raw=true, the file's bytes as an attachment",
                format="binary")
PATCH = text("text/x-diff", "With format=patch or Accept: text/x-diff, the patch as an attachment")
PROMETHEUS = text("text/plain", "Prometheus text exposition format (version 0.0.4)")
HTML = text("text/html", "An HTML page")
SVG = text("image/svg+xml", "The icon")


def redirect(to: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {303: {"description": f"{description}; redirects to {to}",
                  "headers": {"Location": {"schema": {"type": "string"}}}}}


def html_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Errors a browser-facing route answers with an HTML page (the login form and its message)."""
    return {status: {"description": ERROR_TEXT[status] + "; the login page with the message",
                     "content": {"text/html": {"schema": {"type": "string"}}}} for status in statuses}


LOGIN = {**HTML, **redirect("/", "Logged in: the session cookie is set (am_session, HttpOnly)"),
         **html_errors(400, 401, 429)}


def install(app: FastAPI) -> None:
    """Finish ``/openapi.json``: FastAPI documents its own 422 body (``{"detail": [...]}``), which
    this service never sends; every 422 is ``ErrorResponse``. The middleware's answers (auth,
    Host/Origin checks, the body limit, the wrong-token throttle) are added to every operation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
                          .pop("$defs", {}))
        components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components["ErrorResponse"].pop("$defs", None)
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        # FastAPI gives an HTML route a JSON 422 too; the middleware's answers are JSON everywhere
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                answers = operation.setdefault("responses", {})
                if "422" in answers and "HTTPValidationError" in str(answers["422"]):
                    answers["422"] = {"description": ERROR_TEXT[422], "content": error_ref}
                for status in MIDDLEWARE_STATUSES:
                    if status in (401, 429) and path in OPEN_PATHS:  # no credentials asked there
                        continue
                    answer = answers.setdefault(str(status), {"description": ERROR_TEXT[status]})
                    answer.setdefault("content", {}).update(error_ref)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- service -----------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class PageList(BaseModel):
    pages: list[str] = Field(..., description="the UI's page modules that exist")


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


# -- runs, terminals, files --------------------------------------------------------------------


class Pruned(BaseModel):
    deleted: int
    older_than_days: float


class Terminal(BaseModel):
    id: str
    backend: str
    route_reason: str
    command: str = Field(..., description="what runs in it, as one line")
    cols: int
    rows: int
    created_at: str
    attached: bool = Field(..., description="a WebSocket is attached now")
    sandbox_id: str | None
    recorded: bool


class Moved(BaseModel):
    agent: str
    path: str = Field(..., description="the new path")
    from_: str = Field(..., alias="from", description="the old path")


# -- sandboxes ---------------------------------------------------------------------------------


class Sandbox(BaseModel):
    """A sandbox a backend runs for Agent Manager. Remote backends add what their API says of it
    (a plugin's ``list_sandboxes`` items are validated against this: ``id``, ``run`` and ``state``
    are required)."""

    backend: str
    id: str = Field(..., description="the backend's id (a host pid for local sandboxes)")
    run: str | None = Field(..., description="the run it serves, if any")
    state: str
    name: str | None = None
    instance: str | None = Field(None, description="the label of the Agent Manager instance that made it")
    pool: bool | None = Field(None, description="a warm-pool sandbox")
    labels: dict[str, str] | None = None
    created_at: str | None = None
    cpu: float | None = None
    memory: float | None = Field(None, description="GiB")
    disk: float | None = Field(None, description="GiB")
    in_use: bool | None = Field(None, description="a live run or warm pool of this service uses it")
    this_instance: bool | None = None


class Swept(BaseModel):
    deleted: int


# -- settings ----------------------------------------------------------------------------------


def _public(annotation: Any) -> Any:
    """A setting's type as the API shows it: secrets masked, paths as text."""
    if annotation == SecretStr | None:
        return Literal["********"] | None
    if annotation == Path:
        return str
    if annotation == Path | None:
        return str | None
    return annotation


def settings_view(settings: type[BaseModel]) -> type[BaseModel]:
    """GET/PATCH /api/settings: every field of ``settings`` (derived, so a new setting or section
    is described without touching this), plus what the Settings page needs to know about them."""
    fields: dict[str, Any] = {
        name: (_public(info.annotation), Field(..., description=info.description))
        for name, info in settings.model_fields.items()}
    fields.update(
        mutable=(list[str], Field(..., description="settings PATCH may change now")),
        restart_required=(list[str], Field(..., description="settings that only a restart changes")),
        from_env=(dict[str, str], Field(..., description="setting → the environment variable that sets it")),
        listening=(str | None, Field(..., description="where the service really listens")))
    model: type[BaseModel] = create_model("SettingsView", __doc__="The service's settings; secrets are "
                                          "'********' when set, null when not.", **fields)
    return model


SettingsView = settings_view(Settings)
