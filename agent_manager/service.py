"""The composition root: builds the database, executors and managers from settings.

Kept apart from the web layer so the CLI, tests and benchmarks can start the same service
the HTTP app uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import signal
from typing import Any

from agent_manager.errors import ConfigError
from agent_manager.executors.base import Executor
from agent_manager.executors.local import LocalExecutor
from agent_manager.executors.process import signal_tagged
from agent_manager.runs import RunManager
from agent_manager.settings import Settings
from agent_manager.store import Database

log = logging.getLogger("agent_manager")
MIN_FREE_BYTES = 16 * 1024 * 1024


def check_data_dir(settings: Settings) -> None:
    """Fail at start, with a clear message, on an unwritable or full data directory."""
    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"the data directory {home} is not writable: {exc.strerror or exc}. "
                          "Set AGENT_MANAGER_HOME to a writable directory.") from exc
    free = shutil.disk_usage(home).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"the disk holding {home} is full ({free // 1024} KiB free); free some space "
                          "or set AGENT_MANAGER_HOME elsewhere.")


def tag_prefix(settings: Settings) -> str:
    """Identifies processes started for this data directory (see executors.process)."""
    return "am-" + hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:12]


def build_executors(settings: Settings, prefix: str, environ: dict[str, str]) -> dict[str, Executor]:
    """``environ`` is the service's environment, read once here (backends never read it)."""
    executors: dict[str, Executor] = {"local": LocalExecutor(settings, prefix, environ)}
    try:
        from agent_manager.executors.sandbox import SYSTEM_PATH, SandboxExecutor
        executors["sandbox"] = SandboxExecutor(settings, prefix, environ.get("PATH") or SYSTEM_PATH)
    except ImportError as exc:  # pragma: no cover - only while the module is missing
        log.warning("sandbox backend unavailable: %s", exc)
    try:
        from agent_manager.executors.daytona import DaytonaExecutor
        executors["daytona"] = DaytonaExecutor(settings, prefix)
    except ImportError as exc:  # pragma: no cover
        log.warning("daytona backend unavailable: %s", exc)
    return executors


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = tag_prefix(settings)
        self.db: Database | None = None
        self.executors: dict[str, Executor] = {}
        self._runs: RunManager | None = None
        self.extras: dict[str, Any] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def runs(self) -> RunManager:
        assert self._runs is not None, "service not started"
        return self._runs

    @property
    def database(self) -> Database:
        assert self.db is not None, "service not started"
        return self.db

    async def start(self) -> None:
        check_data_dir(self.settings)
        # Whatever a crashed predecessor left running for this data directory ends now.
        killed = signal_tagged(self.prefix + ":", signal.SIGKILL)
        if killed:
            log.warning("killed %d process(es) left over from a previous run of the service", killed)
        self.db = Database(self.settings.db_path)
        self.db.migrate()
        os.chmod(self.settings.db_path, 0o600)
        self.executors = build_executors(self.settings, self.prefix, dict(os.environ))
        self._runs = RunManager(self.db, self.settings, self.executors)
        recovered = self._runs.recover()
        if recovered:
            log.warning("marked %d unfinished run(s) from a previous start as interrupted", recovered)
        from agent_manager.workspaces import Workspaces
        workspaces = self.extras["workspaces"] = self._runs.workspaces = Workspaces(self.db, self.settings)
        self._background.add(asyncio.create_task(self._tidy_workspaces(workspaces)))
        from agent_manager.orchestration.engine import OrchestrationEngine
        engine = self.extras["orchestrations"] = OrchestrationEngine(self.db, self.settings, self._runs)
        if engine.recover():
            log.warning("orchestrations left running by a previous start are now interrupted (resumable)")
        if self.settings.daytona_configured and "daytona" in self.executors:
            self._background.add(asyncio.create_task(self._prepare_daytona()))

    async def _tidy_workspaces(self, workspaces: Any) -> None:
        """Commit what runs interrupted by a stop left in their workspaces, then prune old ones."""
        try:
            settled = await workspaces.recover()
            if settled:
                log.warning("committed the work of %d run(s) interrupted by the last stop", settled)
            await workspaces.prune()
        except Exception as exc:  # reported, never fatal
            log.warning("workspace housekeeping failed: %s", exc)

    async def _prepare_daytona(self) -> None:
        """Sweep what a previous start of this instance left in Daytona, then fill the warm pool.

        In the background: an unreachable Daytona must not delay or break the service's start.
        """
        from agent_manager.executors import daytona, daytona_api

        try:
            # The SDK takes about a second to import: do it in a thread, not on the loop.
            await asyncio.to_thread(daytona_api._sdk)
            swept = await daytona.sweep(self.settings, instance=self.prefix)
            if swept:
                log.warning("deleted %d leftover Daytona sandbox(es) of this instance", swept)
            executor = self.executors["daytona"]
            if self.settings.daytona_warm_pool and isinstance(executor, daytona.DaytonaExecutor):
                await executor.warm(network=False)
        except Exception as exc:  # reported, never fatal
            log.warning("Daytona start-up sweep failed: %s", exc)

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if "orchestrations" in self.extras:  # before the runs: its steps are runs
            await self.extras.pop("orchestrations").shutdown()
        if self._runs is not None:
            await self._runs.shutdown()
        for executor in self.executors.values():
            try:
                await executor.close()
            except Exception:  # closing must not stop the others from closing
                log.exception("closing the %s backend failed", executor.name)
        if self.db is not None:
            self.db.close()
            self.db = None
