"""The Daytona backend's own settings section, ``[daytona]`` (docs/configuration.md).

Kept apart from daytona.py so that reading settings never imports the Daytona SDK. Key, URL and
target also come from Daytona's own variables (``DAYTONA_API_KEY``, ...), so an existing Daytona
setup just works; ``AGENT_MANAGER_DAYTONA_...`` wins over them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    from agent_manager.settings import Settings


class DaytonaSettings(BaseModel):
    """How to reach Daytona and what the sandboxes look like."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    api_key: SecretStr | None = Field(
        default=None, json_schema_extra={"env": "DAYTONA_API_KEY"},
        description="API key; without it the backend reports that Daytona is not configured")
    api_url: str | None = Field(
        default=None, json_schema_extra={"env": "DAYTONA_API_URL"},
        description="API URL (unset: https://app.daytona.io/api)")
    target: str | None = Field(
        default=None, json_schema_extra={"env": "DAYTONA_TARGET"},
        description="region (unset: the organisation's default)")
    snapshot: str | None = Field(
        default=None, description="snapshot to create sandboxes from (unset: Daytona's default)")
    image: str | None = Field(
        default=None, description="image to build sandboxes from instead; needed for per-run CPU/memory/disk "
                                  "(a snapshot fixes its own size)")
    auto_stop_minutes: int = Field(
        default=15, ge=0, description="stop a sandbox after this many idle minutes (0 = never)")
    auto_delete_minutes: int = Field(
        default=0, ge=-1, description="delete a stopped sandbox after this many minutes (0 = at once, -1 = never)")
    create_timeout_s: float = Field(
        default=120, gt=0, description="how long creation plus start may take, in seconds")
    warm_pool: int = Field(
        default=0, ge=0, le=64, description="started sandboxes kept ready per sandbox shape for fast starts; a "
                                            "new image or snapshot replaces them")
    max_concurrent_creates: int = Field(
        default=32, ge=1, le=4096, description="sandbox creations in flight at once (creation plus waiting for "
                                               "`started`); further runs wait their turn, first come first served")

    @property
    def configured(self) -> bool:
        """A key is set (the URL and target have defaults)."""
        return self.api_key is not None and bool(self.api_key.get_secret_value())


def daytona_section(settings: Settings) -> DaytonaSettings:
    """The ``[daytona]`` section of ``settings`` (its defaults if the backend is not registered)."""
    section = settings.section("daytona")
    return section if isinstance(section, DaytonaSettings) else DaytonaSettings()
