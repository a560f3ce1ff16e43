"""The ``local`` backend: the agent runs as a child process on this host.

Each run gets a tracking cgroup where the host allows it (``cgroup.py``): its processes are
then found and ended whatever they do to their session or environment, on cancel, when the
run ends, at shutdown and — by name — at the next start after a crash. Without writable
cgroups (service not root, read-only cgroupfs) the tag + parent-link fallback of
``process.py`` applies.

``ExecSpec.run_as`` names an OS user the run becomes (uid, gid, groups, no_new_privs) through
``setpriv`` after joining the cgroup; the workspace is handed over to that user first.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import Availability, ExecSpec
from agent_manager.executors.cgroup import RunCgroup, cgroup_name, sweep
from agent_manager.executors.identity import SYSTEM_PATH, HostUser, drop_to, prepare_workspace
from agent_manager.executors.process import LiveTrees, ProcessExecution, base_environment, ctty_prefix, new_tag
from agent_manager.executors.pty import HostPty
from agent_manager.plugins import HOST, BackendContext, BackendPlugin
from agent_manager.settings import Settings


class LocalExecutor:
    name = "local"
    switches_user = True  # honours ExecSpec.run_as (runs.py refuses run_as on backends that do not)

    def __init__(self, settings: Settings, tag_prefix: str, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.tag_prefix = tag_prefix
        # The service's own environment minus everything but the basics an agent CLI needs.
        self.environ = base_environment(environ or {})
        self.sh = shutil.which("sh", path=SYSTEM_PATH) or "/bin/sh"
        self._live = LiveTrees(tag_prefix)
        try:
            sweep(tag_prefix)  # groups a crashed predecessor (same data dir) left behind
        except OSError:
            pass

    async def available(self) -> Availability:
        return Availability(True)

    def has_command(self, command: str) -> bool:
        return shutil.which(command, path=self.environ.get("PATH")) is not None

    @staticmethod
    def workspace_path(workspace: Path, name: str) -> str:
        """Where the agent sees the workspace file ``name``: right where it is on this host."""
        return str(workspace.resolve() / name)

    async def open_pty(self, spec: ExecSpec, cols: int, rows: int, shell: bool) -> HostPty:
        """An interactive terminal (terminals.py): ``spec`` started with a PTY as its terminal."""
        return await HostPty.open(self, spec, cols, rows)

    async def start(self, spec: ExecSpec) -> ProcessExecution:
        user = HostUser.resolve(spec.run_as) if spec.run_as else None
        env = {**self.environ, **spec.env}
        if user is not None:
            env.update(USER=user.name, LOGNAME=user.name,
                       HOME=user.home if os.path.isdir(user.home) else str(spec.workspace or "/"))
        cwd = spec.cwd or (str(spec.workspace) if spec.workspace else None)
        if spec.workspace and not spec.files and user is None:
            spec.workspace.mkdir(parents=True, exist_ok=True)  # all there is to do: no thread hop (a DAG hop's cost)
        elif spec.workspace:
            await asyncio.to_thread(prepare_workspace, spec.workspace, spec.files, user, spec.hand_over)
        argv = list(spec.argv)
        resolved = shutil.which(argv[0], path=env.get("PATH"))
        if resolved and os.sep not in argv[0]:
            argv[0] = resolved
        elif not os.path.exists(os.path.join(cwd or "", argv[0])):  # the launch chain would only say 127
            raise ExecutionError(f"executable not found: {argv[0]}", {"argv0": argv[0]})
        prefix = drop_to(user, no_new_privs=True) if user is not None else []
        if spec.tty is not None:  # an interactive terminal: its own session, the PTY as controlling terminal
            prefix = [*prefix, *ctty_prefix()]
        tag = new_tag(self.tag_prefix)
        cgroup = RunCgroup.create_tracking(cgroup_name(self.tag_prefix, tag.rsplit(":", 1)[-1]))
        if cgroup is not None:
            prefix = cgroup.join_argv(self.sh) + prefix
        try:
            execution = await ProcessExecution.spawn(
                [*prefix, *argv], env=env, cwd=cwd, stdin=spec.stdin, tag=tag,
                kill_grace_s=self.settings.kill_grace_s, stream_close_grace_s=self.settings.stream_close_grace_s,
                cgroup=cgroup, tty=spec.tty)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        if cgroup is not None:
            execution.info["cgroup"] = cgroup.path
        return self._live.add(execution)

    async def close(self) -> None:
        await self._live.close()


def _build(ctx: BackendContext) -> LocalExecutor:
    return LocalExecutor(ctx.settings, ctx.prefix, dict(ctx.environ))


PLUGIN = BackendPlugin(
    name="local", title="local (this host)", capabilities=frozenset({HOST}), factory=_build,
    description="A child process on this host, as the service's user (or run_as_user for non-admin users); "
                "cancel ends its whole process tree.")
