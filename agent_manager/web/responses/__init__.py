"""What the HTTP API answers: the error shape, the non-JSON media types, and the response
models of every route whose data is not a model of ``agent_manager.models``.

Why a package of their own: a router declares its answer with ``response_model=`` and
``responses=`` (``from agent_manager.web import responses as api``), and ``/openapi.json``
describes every answer, which ``tests/test_schema.py`` checks against a real server. A route
whose code returns a different shape fails that test: FastAPI validates the return value
against the model and answers 500.

Conventions:
- a field that is always present is required (``None`` written out when nullable);
- a key the code only sometimes sends has a default, and its route uses
  ``response_model_exclude_unset=True``, so the answer keeps exactly the keys the code sent;
- models keep pydantic's default of ignoring unknown keys: what is not declared here is
  never sent (a stored column added later stays private until it is declared); only the
  settings view is open (``extra="allow"``), for the sections backend plugins add.
"""

from agent_manager.web.responses.errors import (
    DOWNLOAD,
    ERROR_TEXT,
    HTML,
    LOGIN,
    MIDDLEWARE_STATUSES,
    PATCH,
    PROMETHEUS,
    SSE,
    SVG,
    ErrorBody,
    ErrorResponse,
    errors,
    html_errors,
    install,
    redirect,
    text,
)
from agent_manager.web.responses.service import (
    AdminToken,
    AuditEntry,
    AuditPage,
    DirListing,
    FileContent,
    FileEntry,
    FileWritten,
    Health,
    Me,
    Moved,
    PageList,
    Pruned,
    Sandbox,
    SettingsView,
    Swept,
    Terminal,
    User,
    UserWithToken,
    settings_view,
)
from agent_manager.web.responses.work import (
    DiffFile,
    JsonSchemaDocument,
    MergedWorkspace,
    Orchestration,
    OrchestrationPage,
    OrchestrationStatus,
    OrchestrationSummary,
    PlanDraft,
    PlanFile,
    PlanFileContent,
    PlanFileList,
    PlanIssue,
    PlanValidation,
    Project,
    ProjectDetail,
    ProjectWorkspace,
    SavedPlan,
    StepCounts,
    StepState,
    StepStatus,
    WorkspaceDiff,
)

__all__ = [
    "AdminToken",
    "AuditEntry",
    "AuditPage",
    "DOWNLOAD",
    "DiffFile",
    "DirListing",
    "ERROR_TEXT",
    "ErrorBody",
    "ErrorResponse",
    "FileContent",
    "FileEntry",
    "FileWritten",
    "HTML",
    "Health",
    "JsonSchemaDocument",
    "LOGIN",
    "MIDDLEWARE_STATUSES",
    "Me",
    "MergedWorkspace",
    "Moved",
    "Orchestration",
    "OrchestrationPage",
    "OrchestrationStatus",
    "OrchestrationSummary",
    "PATCH",
    "PROMETHEUS",
    "PageList",
    "PlanDraft",
    "PlanFile",
    "PlanFileContent",
    "PlanFileList",
    "PlanIssue",
    "PlanValidation",
    "Project",
    "ProjectDetail",
    "ProjectWorkspace",
    "Pruned",
    "SSE",
    "SVG",
    "Sandbox",
    "SavedPlan",
    "SettingsView",
    "StepCounts",
    "StepState",
    "StepStatus",
    "Swept",
    "Terminal",
    "User",
    "UserWithToken",
    "WorkspaceDiff",
    "errors",
    "html_errors",
    "install",
    "redirect",
    "settings_view",
    "text",
]
