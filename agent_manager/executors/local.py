"""The ``local`` backend: the agent runs as a child process on this host."""

from __future__ import annotations

import os
import shutil
import signal

from agent_manager.executors.base import Availability, ExecSpec
from agent_manager.executors.process import ProcessExecution, base_environment, ctty_prefix, new_tag, signal_tagged
from agent_manager.settings import Settings


class LocalExecutor:
    name = "local"

    def __init__(self, settings: Settings, tag_prefix: str, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.tag_prefix = tag_prefix
        # The service's own environment minus everything but the basics an agent CLI needs.
        self.environ = base_environment(environ or {})

    async def available(self) -> Availability:
        return Availability(True)

    def has_command(self, command: str) -> bool:
        return shutil.which(command, path=self.environ.get("PATH")) is not None

    async def start(self, spec: ExecSpec) -> ProcessExecution:
        env = {**self.environ, **spec.env}
        cwd = spec.cwd or (str(spec.workspace) if spec.workspace else None)
        if spec.workspace:
            spec.workspace.mkdir(parents=True, exist_ok=True)
            for rel, data in spec.files.items():
                target = spec.workspace / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        argv = list(spec.argv)
        resolved = shutil.which(argv[0], path=env.get("PATH"))
        if resolved and os.sep not in argv[0]:
            argv[0] = resolved
        if spec.tty is not None:
            argv = [*ctty_prefix(), *argv]
        return await ProcessExecution.spawn(
            argv, env=env, cwd=cwd, stdin=spec.stdin, tag=new_tag(self.tag_prefix),
            kill_grace_s=self.settings.kill_grace_s, stream_close_grace_s=self.settings.stream_close_grace_s,
            tty=spec.tty)

    async def close(self) -> None:
        signal_tagged(self.tag_prefix + ":", signal.SIGKILL)
