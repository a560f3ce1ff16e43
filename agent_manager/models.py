"""Pydantic models of the public contracts (DESIGN 3): what the API takes and returns."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from agent_manager import plugins
from agent_manager.plugins import DEFAULT_KIND

# Which kinds and backends exist is the registry's (plugins.py: entry points), so these are
# strings checked against it; a wrong one is a 422 naming the installed choices.
Kind = Annotated[str, AfterValidator(plugins.check_kind),
                 Field(description="an installed agent kind (GET /api/kinds)")]
Backend = Annotated[str, AfterValidator(plugins.check_backend),
                    Field(description="an installed backend (GET /api/backends)")]
RequestedBackend = Annotated[str, AfterValidator(lambda name: plugins.check_backend(name, allow_auto=True)),
                             Field(description="an installed backend (GET /api/backends), or auto")]
# Which of a process's output streams a chunk of text came from (executors read, agents parse).
Stream = Literal["stdout", "stderr"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "interrupted"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "interrupted"})
OUTPUT_PREVIEW_CHARS = 500  # of a run's answer, in a run list (RunSummary)

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NO_NUL = r"^[^\x00]*$"  # text parameters: SQLite (FTS) cannot take a NUL
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SECRET_NAME_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|COOKIE|PRIVATE|SESSION)",
                            re.IGNORECASE)
MASK = "********"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME_RE.search(name))


def mask_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (MASK if is_secret_name(k) and v else v) for k, v in env.items()}


def _api_base(value: str | None) -> str | None:
    """An http(s) URL without spaces or control bytes, or None ("" clears it)."""
    if value is None or value == "":
        return None
    if not re.fullmatch(r"https?://[^\s\x00-\x1f\x7f]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentFields(Strict):
    command: str | None = Field(None, min_length=1, max_length=4096)
    args: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    model: str | None = Field(None, max_length=256)
    backend: Backend | None = None
    trusted: bool = True
    timeout_s: float = Field(600, gt=0, le=7 * 24 * 3600)
    network: bool = False
    # Your own model gateway: the base URL the CLI's SDK takes, and its key (a secret: shown
    # masked, passed to the CLI only in its environment). See docs/agents.md.
    api_base: str | None = Field(None, max_length=2048)
    api_key: str | None = Field(None, max_length=8192)

    @field_validator("api_base")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        return _api_base(value)

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError("must not contain control characters")
        return value or None

    @field_validator("command", "model")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _no_nul(value) if value is not None else None

    @field_validator("args")
    @classmethod
    def _args(cls, value: list[str]) -> list[str]:
        for item in value or []:  # None reaches here from AgentUpdate; the router refuses it by name
            _no_nul(item)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in (value or {}).items():
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
            _no_nul(val)
        return value

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        _no_nul(value)
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value


class AgentCreate(AgentFields):
    name: str = Field(..., pattern=NAME_RE)
    kind: Kind = DEFAULT_KIND


class AgentUpdate(Strict):
    """Every field optional; an env value equal to the mask keeps the stored secret."""

    name: str | None = Field(None, pattern=NAME_RE)
    kind: Kind | None = None
    command: str | None = Field(None, min_length=1, max_length=4096)
    args: list[str] | None = None
    env: dict[str, str] | None = None
    working_dir: str | None = None
    model: str | None = None
    backend: Backend | None = None
    trusted: bool | None = None
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    network: bool | None = None
    api_base: str | None = Field(None, max_length=2048)
    api_key: str | None = Field(None, max_length=8192)

    _env = field_validator("env")(AgentFields._env.__func__)  # type: ignore[attr-defined]
    _base = field_validator("api_base")(AgentFields._base.__func__)  # type: ignore[attr-defined]
    _key = field_validator("api_key")(AgentFields._key.__func__)  # type: ignore[attr-defined]
    _args = field_validator("args")(AgentFields._args.__func__)  # type: ignore[attr-defined]
    _wd = field_validator("working_dir")(AgentFields._working_dir.__func__)  # type: ignore[attr-defined]


class Agent(BaseModel):
    id: str
    name: str
    kind: str  # as stored: an agent whose plugin was uninstalled is still shown
    command: str
    args: list[str]
    env: dict[str, str]
    working_dir: str | None
    model: str | None
    backend: str | None
    trusted: bool
    timeout_s: float
    network: bool
    api_base: str | None = None
    api_key: str | None = None  # always MASK when set
    available: bool
    install_hint: str
    created_at: str
    updated_at: str


class ResourcesIn(Strict):
    cpu: float | None = Field(None, gt=0, le=256)
    memory_mb: int | None = Field(None, gt=0, le=1_048_576)


class RunCreate(Strict):
    agent: str = Field(..., min_length=1)
    prompt: str = Field(..., min_length=1, max_length=1_000_000)
    conversation_id: str | None = None
    project: str | None = Field(None, min_length=1, max_length=200)
    base: str | None = Field(None, min_length=1, max_length=250)
    backend: RequestedBackend | None = None
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    resources: ResourcesIn | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return _no_nul(value)


class WorkspaceInfo(BaseModel):
    """The ``workspace`` of a run, conversation or orchestration on a project (DESIGN 3.7)."""

    id: str
    project: str
    branch: str
    base: str = Field(..., description="the branch (or commit) it started from")
    base_commit: str
    head_commit: str
    state: Literal["open", "merged", "discarded"]
    files_changed: int
    insertions: int
    deletions: int
    created_at: str
    updated_at: str
    note: str | None = Field(..., description="why it changed on its own (a rewrite, a prune)")


class _RunFields(BaseModel):
    id: str
    agent_id: str
    agent_name: str
    prompt: str
    status: RunStatus
    backend: str | None
    route_reason: str | None
    exit_code: int | None
    error: str | None
    usage: dict[str, Any] | None
    conversation_id: str | None
    sandbox_id: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    project: str | None = None
    workspace: WorkspaceInfo | None = None


class Run(_RunFields):
    output: str | None


class RunSummary(_RunFields):
    """A run in a list: its answer's start instead of the whole answer (which may be megabytes;
    a page of fifty used to carry all of them). ``GET /api/runs/{id}`` has the whole answer."""

    output_preview: str | None = Field(..., description=f"the answer's first {OUTPUT_PREVIEW_CHARS} characters")
    output_chars: int | None = Field(..., description="the whole answer's length in characters")


class RunPage(BaseModel):
    items: list[RunSummary]
    total: int
    limit: int
    offset: int


class Event(BaseModel):
    seq: int
    type: str
    data: dict[str, Any]
    created_at: str


class ConversationCreate(Strict):
    title: str = Field("", max_length=200)
    agent: str | None = None
    project: str | None = Field(None, min_length=1, max_length=200)
    base: str | None = Field(None, min_length=1, max_length=250)


class Message(BaseModel):
    id: int
    role: Literal["user", "assistant"]
    content: str
    agent_id: str | None
    run_id: str | None
    created_at: str


class Conversation(BaseModel):
    id: str
    title: str
    agent_id: str | None
    created_at: str
    updated_at: str
    messages: list[Message] | None = None
    project: str | None = None
    workspace: WorkspaceInfo | None = None


class MessageCreate(Strict):
    content: str = Field(..., min_length=1, max_length=1_000_000)
    agent: str | None = None
    backend: RequestedBackend | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return _no_nul(value)


class MessagePosted(BaseModel):
    message: Message
    run: Run


class ProjectCreate(Strict):
    name: str = Field(..., pattern=NAME_RE)
    path: str | None = Field(None, min_length=1, max_length=4096)
    git_url: str | None = Field(None, min_length=1, max_length=4096)
    base: str | None = Field(None, min_length=1, max_length=250)

    @field_validator("path", "git_url", "base")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _no_nul(value) if value is not None else None


class MergeRequest(Strict):
    strategy: Literal["merge", "squash"] = "merge"


class BackendInfo(BaseModel):
    """One installed backend (GET /api/backends): what it can do, and whether it can run now."""

    name: str
    title: str
    description: str
    capabilities: list[str] = Field(description="subset of host, isolated, remote (docs/plugins.md)")
    available: bool
    reason: str = Field(description="why it is unavailable (empty when available)")
    settings_section: str | None = Field(description="its own section of the settings, if it declares one")
    builtin: bool
    plugin: str | None = Field(description="the distribution providing it, with its version")
    loaded: bool = Field(description="false: the plugin failed to load or its name is taken (reason says); "
                                     "it cannot be chosen")


class KindInfo(BaseModel):
    """One installed agent kind (GET /api/kinds)."""

    name: str
    title: str
    description: str
    default_command: str = Field(description="the CLI run when an agent names no command ('' = it must)")
    install_hint: str
    supports_resume: bool
    available: bool | None = Field(description="whether default_command is on the service's PATH (null: no default)")
    builtin: bool
    plugin: str | None
    loaded: bool = Field(description="false: the plugin failed to load or its name is taken (description says)")
    default: bool = Field(False, description="the kind of an agent created without one (runs any program)")
