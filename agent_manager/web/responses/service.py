"""Answers about the service and what it runs: health, UI pages, users and the audit log,
terminals, files, sandboxes, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model

from agent_manager.models import MASK
from agent_manager.settings import Settings

# -- service -----------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class PageList(BaseModel):
    pages: list[str] = Field(..., description="the UI's page modules that exist")


# -- users and the audit log ------------------------------------------------------------------


class User(BaseModel):
    id: str
    name: str
    trusted: bool
    admin: bool
    created_at: str


class UserWithToken(User):
    token: str = Field(..., description="shown once; only its hash is kept")


class AdminToken(BaseModel):
    token: str = Field(..., description="the new admin token, shown once (also written to the token file)")


class Me(BaseModel):
    id: str | None
    name: str
    admin: bool
    trusted: bool


class AuditEntry(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str | None
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    total: int
    limit: int
    offset: int


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


class FileEntry(BaseModel):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    modified: str


class DirListing(BaseModel):
    type: Literal["dir"]
    agent: str
    root: str
    path: str
    entries: list[FileEntry]
    truncated: bool


class FileContent(BaseModel):
    type: Literal["file"]
    agent: str
    path: str
    size: int
    modified: str
    encoding: Literal["utf-8", "base64"]
    content: str


class FileWritten(BaseModel):
    type: Literal["file"]
    agent: str
    path: str
    size: int
    modified: str


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


def _mentions(annotation: Any, kind: type) -> bool:
    return annotation is kind or any(_mentions(arg, kind) for arg in get_args(annotation))


def _public(annotation: Any) -> Any:
    """A setting's type as the API shows it: secrets only as the mask (whatever else their type
    says: pydantic would otherwise accept and re-mask any string, with a mask of another length),
    paths as text."""
    if _mentions(annotation, SecretStr):
        return Literal[MASK] | None
    if _mentions(annotation, Path):
        return str | None if _mentions(annotation, type(None)) else str
    return annotation


class SettingField(BaseModel):
    """One field of a backend's settings section, as the Settings page draws it (sections.describe)."""

    name: str
    type: Literal["boolean", "integer", "number", "string", "list", "secret"]
    default: Any = Field(..., description="null for a secret or when there is none")
    description: str
    nullable: bool = Field(..., description="null (not set) is a valid value")
    choices: list[Any] | None
    minimum: float | None
    maximum: float | None
    env: str | None = Field(..., description="another program's environment variable for it, besides "
                                             "AGENT_MANAGER_<SECTION>_<FIELD>")


class SectionInfo(BaseModel):
    """A backend's own settings section: ``[name]`` in config.toml, ``name.field`` in PATCH."""

    name: str
    title: str
    env_prefix: str
    fields: list[SettingField]


def section_views() -> type[BaseModel]:
    """``sections`` of the settings view: one model per installed backend's section, its fields
    typed as the API shows them (secrets only as the mask); sections of backends loaded later
    (tests) pass as they are."""
    from agent_manager import sections

    fields: dict[str, Any] = {}
    for name, model in sections.section_models().items():
        shown: dict[str, Any] = {field: (_public(info.annotation), Field(..., description=info.description))
                                 for field, info in model.model_fields.items()}
        view = create_model(f"{sections.stem(name).title().replace('_', '')}Section",
                            __config__=ConfigDict(extra="forbid"), __doc__=f"The {name} backend's own settings.",
                            **shown)
        fields[sections.stem(name)] = (view | None, Field(None, alias=name))
    return create_model("SettingsSections", __config__=ConfigDict(extra="allow", populate_by_name=True),
                        __doc__="Each installed backend's own settings, by backend name.", **fields)


def settings_view(settings: type[BaseModel]) -> type[BaseModel]:
    """GET/PATCH /api/settings: every field of ``settings`` (derived, so a new setting or section
    is described without touching this), plus what the Settings page needs to know about them."""
    fields: dict[str, Any] = {
        name: (_public(info.annotation), Field(..., description=info.description))
        for name, info in settings.model_fields.items()}
    fields.update(
        mutable=(list[str], Field(..., description="settings PATCH may change now (a section's as section.field)")),
        restart_required=(list[str], Field(..., description="settings that only a restart changes")),
        from_env=(dict[str, str], Field(..., description="setting (or section.field) → the environment variable "
                                                          "that sets it")),
        listening=(str | None, Field(..., description="where the service really listens")),
        sections=(section_views(), Field(..., description="each backend's own settings by backend name (secrets "
                                                          "'********' when set, null when not)")),
        section_info=(list[SectionInfo], Field(..., description="what each section's fields are")))
    model: type[BaseModel] = create_model(
        "SettingsView", __doc__="The service's settings; secrets are '********' when set, null when not. Open: "
        "backend plugins add sections of their own.", __config__=ConfigDict(extra="allow"), **fields)
    return model


SettingsView = settings_view(Settings)
