"""The sandbox backend's own settings section, ``[sandbox]`` (docs/configuration.md).

Declared by the backend's plugin (``BackendPlugin.settings_model``); the executor receives this
object (``BackendContext.section``) and reads it when it uses a value, so a change through
``PATCH /api/settings`` applies to the next run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SandboxSettings(BaseModel):
    """Limits and identities of bubblewrap runs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    uid: int = Field(default=65534, ge=0, le=2**32 - 2, description="uid and gid inside the sandbox")
    user: str = Field(
        default="nobody", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="host user a root service becomes before bubblewrap (a name or a uid; never root); ignored "
                    "when the service is not root")
    disk_mb: int = Field(
        default=2048, ge=1, description="MiB one run may add to its workspace; also the largest single file it "
                                        "may write")
    memory_mb: int = Field(
        default=2048, ge=16, description="memory limit per run in MiB (cgroup; or RLIMIT_DATA without cgroups); a "
                                         "run's declared `resources.memory_mb` replaces it")
    pids_max: int = Field(
        default=256, ge=8, description="task limit per run (cgroup `pids.max`; or RLIMIT_NPROC)")
    tmp_mb: int = Field(
        default=256, ge=1, description="size in MiB of the private `/tmp` and `/dev/shm`, and of `/workspace` when "
                                       "a run has no workspace")
