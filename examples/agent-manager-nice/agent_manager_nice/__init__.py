"""The ``nice`` backend: agents as child processes of the service, at the lowest priority.

Built only on Agent Manager's public executor pieces (docs/plugins.md): ``ProcessExecution``
(streams stdout/stderr as they come, ends the whole process tree on cancel with SIGINT →
SIGTERM → SIGKILL, tags every process so a restart after a crash ends leftovers),
``base_environment`` (the agent never sees the service's environment) and ``HostPty``
(interactive terminals). The priority is lowered by ``nice``/``ionice`` *in front of* the
agent's own argv, so the prompt is still exactly one argv element and no shell is involved.
How low is the backend's own settings section, ``[nice]`` (``NiceSettings``): Agent Manager
loads it from config.toml and ``AGENT_MANAGER_NICE_*``, shows it on its Settings page and
changes it through its API; the executor reads it when it starts a run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import Availability, ExecSpec
from agent_manager.executors.identity import SYSTEM_PATH, prepare_workspace
from agent_manager.executors.process import LiveTrees, ProcessExecution, base_environment, ctty_prefix, new_tag
from agent_manager.executors.pty import HostPty
from agent_manager.plugins import HOST, BackendContext, BackendPlugin

IONICE_CLASSES = {"idle": "3", "best-effort": "2"}


class NiceSettings(BaseModel):
    """The ``[nice]`` settings section: how low the runs' priority is."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    niceness: int = Field(default=19, ge=0, le=19, description="CPU niceness of runs (19 = the lowest priority)")
    io_class: Literal["idle", "best-effort"] = Field(
        default="idle", description="I/O scheduling class of runs (ionice); idle waits for every other process")


class NiceExecutor:
    """Like the built-in ``local`` backend, minus the cgroup and user switching, at nice 19."""

    name = "nice"

    def __init__(self, ctx: BackendContext) -> None:
        self.settings = ctx.settings
        # The live [nice] section: read when a run starts, so a change applies to the next run.
        self.section = ctx.section if isinstance(ctx.section, NiceSettings) else NiceSettings()
        self.tag_prefix = ctx.prefix
        self.environ = base_environment(dict(ctx.environ))
        self.nice = shutil.which("nice", path=SYSTEM_PATH)
        self.ionice = shutil.which("ionice", path=SYSTEM_PATH)
        self._live = LiveTrees(ctx.prefix)

    async def available(self) -> Availability:
        if self.nice is None:
            return Availability(False, "nice (coreutils) is not installed")
        return Availability(True)

    def priority_argv(self) -> list[str]:
        """What goes in front of the agent's argv: nice, and ionice's idle class when present."""
        if self.nice is None:
            raise ExecutionError("the nice backend needs nice (coreutils)")
        argv = [self.nice, "-n", str(self.section.niceness)]
        return argv + ([self.ionice, "-c", IONICE_CLASSES[self.section.io_class]] if self.ionice else [])

    async def start(self, spec: ExecSpec) -> ProcessExecution:
        if not spec.argv:
            raise ExecutionError("nothing to run: empty argv")
        env = {**self.environ, **spec.env}
        cwd = spec.cwd or (str(spec.workspace) if spec.workspace else None)
        if spec.workspace is not None:
            await asyncio.to_thread(prepare_workspace, spec.workspace, spec.files, None, spec.hand_over)
        argv = list(spec.argv)
        resolved = shutil.which(argv[0], path=env.get("PATH"))
        if resolved and os.sep not in argv[0]:
            argv[0] = resolved
        elif not os.path.exists(os.path.join(cwd or "", argv[0])):
            raise ExecutionError(f"executable not found: {argv[0]}", {"argv0": argv[0]})
        prefix = self.priority_argv() + (ctty_prefix() if spec.tty is not None else [])
        execution = await ProcessExecution.spawn(
            [*prefix, *argv], env=env, cwd=cwd, stdin=spec.stdin, tag=new_tag(self.tag_prefix),
            kill_grace_s=self.settings.kill_grace_s, stream_close_grace_s=self.settings.stream_close_grace_s,
            tty=spec.tty)
        execution.info["priority"] = f"nice {self.section.niceness}" + (
            f", ionice {self.section.io_class}" if self.ionice else "")
        return self._live.add(execution)

    async def open_pty(self, spec: ExecSpec, cols: int, rows: int, shell: bool) -> HostPty:
        """An interactive terminal at the same low priority."""
        return await HostPty.open(self, spec, cols, rows)

    async def close(self) -> None:
        """Service shutdown: end every process tree this backend started."""
        await self._live.close()


PLUGIN = BackendPlugin(
    name="nice", title="nice (this host, lowest priority)", capabilities=frozenset({HOST}),
    factory=NiceExecutor, settings_model=NiceSettings,
    description="A child process on this host at nice 19 and idle I/O priority: long runs never slow down "
                "interactive work. Example plugin (examples/agent-manager-nice).")

__all__ = ["PLUGIN", "NiceExecutor", "NiceSettings"]
