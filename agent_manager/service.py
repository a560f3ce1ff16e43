"""The composition root: builds the database, executors and managers from settings.

Kept apart from the web layer so the CLI, tests and benchmarks can start the same service
the HTTP app uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_manager.errors import ConfigError, ExecutorUnavailable, ValidationFailed
from agent_manager.executors.base import Executor, Resources
from agent_manager.executors.local import LocalExecutor
from agent_manager.executors.process import signal_tagged
from agent_manager.executors.routing import RouteRequest, check_isolation
from agent_manager.instance import DataDirLock
from agent_manager.run_request import RunRequest
from agent_manager.runs import RunManager
from agent_manager.settings import Settings
from agent_manager.store import Database
from agent_manager.store import agents as agent_store
from agent_manager.store import conversations as conv_store

if TYPE_CHECKING:
    from agent_manager.orchestration.engine import OrchestrationEngine
    from agent_manager.terminals import TerminalManager
    from agent_manager.workspaces import Workspaces

log = logging.getLogger("agent_manager")
WORKSPACE_PRUNE_EVERY_S = 6 * 3600
MIN_FREE_BYTES = 16 * 1024 * 1024
# Settings the Daytona executor builds its client (or limits) from: a change means a new executor.
DAYTONA_CLIENT_FIELDS = frozenset({"daytona_api_key", "daytona_api_url", "daytona_target",
                                   "daytona_max_concurrent_creates"})
PRUNE_EVERY_S = 3600.0


def secure_data_dir(home: Path) -> None:
    """The data directory is 0700 and every file directly in it 0600 (database, -wal, -shm, token,
    config): nobody but the service's own user may read them — in particular not the OS user
    non-admin runs switch to. Files created later get 0600 where they are created."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(home.stat().st_mode) != 0o700:
        os.chmod(home, 0o700)
    for entry in os.scandir(home):
        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mode & 0o077:
            os.chmod(entry.path, 0o600, follow_symlinks=False)


def check_data_dir(settings: Settings) -> None:
    """Fail at start, with a clear message, on an unwritable or full data directory."""
    home = settings.home
    try:
        secure_data_dir(home)
        probe = home / ".write-test"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
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
        self._workspaces: Workspaces | None = None
        self._terminals: TerminalManager | None = None  # None again once stopping: no new terminals
        self._orchestrations: OrchestrationEngine | None = None
        # A seam for another way to check credentials: called as (value) or (value, cookie=True),
        # it returns the caller (a principal) or None; unset, the admin token and user tokens count.
        self.authenticate: Callable[..., dict[str, Any] | None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Taken by `serve` before the app is built (so a refusal is a clean message), else at start.
        self.lock: DataDirLock | None = None
        # The address `serve` actually listens on (with `--port 0`, not the configured port 0).
        self.address: str | None = None
        self._interrupted = False
        self._prune_wakeup = asyncio.Event()

    @property
    def runs(self) -> RunManager:
        assert self._runs is not None, "service not started"
        return self._runs

    @property
    def database(self) -> Database:
        assert self.db is not None, "service not started"
        return self.db

    @property
    def workspaces(self) -> Workspaces:
        assert self._workspaces is not None, "service not started"
        return self._workspaces

    @property
    def orchestrations(self) -> OrchestrationEngine:
        assert self._orchestrations is not None, "service not started"
        return self._orchestrations

    @property
    def terminals(self) -> TerminalManager:
        """503 (not a bug) when asked before start or while stopping: a terminal may be requested then."""
        if self._terminals is None:
            raise ExecutorUnavailable("terminals are not available: the service is not started or is stopping")
        return self._terminals

    async def start(self) -> None:
        check_data_dir(self.settings)
        if self.lock is None:
            # Before the sweep below: a second service on this directory must harm nothing.
            self.lock = DataDirLock.acquire(self.settings.home)
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
        workspaces = self._workspaces = self._runs.workspaces = Workspaces(self.db, self.settings)
        self._background.add(asyncio.create_task(self._tidy_workspaces(workspaces)))
        from agent_manager.terminals import TerminalManager
        terminals = self._terminals = TerminalManager(self.settings, self.executors, self._runs)
        terminals.workspaces = workspaces
        from agent_manager.orchestration.engine import OrchestrationEngine
        engine = self._orchestrations = OrchestrationEngine(self.db, self.settings, self._runs)
        if engine.recover():
            log.warning("orchestrations left running by a previous start are now interrupted (resumable)")
        if self.settings.daytona_configured and "daytona" in self.executors:
            self._spawn(self._prepare_daytona())
        self._spawn(self._prune_loop())

    def _spawn(self, coro: Any) -> None:
        """A background task the service keeps (and cancels at stop)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def start_run(self, who: dict[str, Any], agent_ref: str, prompt: str, *, conversation_id: str | None,
                  backend: str | None, timeout_s: float | None = None, resources: Resources | None = None,
                  new_workspace: Any = None, workspace_id: str | None = None) -> dict[str, Any]:
        """Start a run for the caller ``who`` (a principal), as POST /api/runs and a chat message
        do: resolve the agent (404), refuse a backend the caller may not use now with a 403
        rather than later as a failed run (docs/security.md), check the conversation is the
        caller's (404 otherwise), then submit."""
        agent = agent_store.get(self.database, agent_ref)
        trusted, admin = bool(who.get("trusted", True)), bool(who.get("admin"))
        check_isolation(RouteRequest(run_backend=backend, agent_backend=agent.get("backend"), user_trusted=trusted),
                        self.settings)
        if conversation_id:
            conv_store.get(self.database, conversation_id, None if admin else who.get("id"))
        return self.runs.submit(RunRequest(
            agent=agent, prompt=prompt, conversation_id=conversation_id, backend=backend, timeout_s=timeout_s,
            resources=resources or Resources(), owner=who.get("id"), user_trusted=trusted, user_admin=admin,
            new_workspace=new_workspace, workspace_id=workspace_id))

    # -- settings changed at runtime -------------------------------------------------------

    async def check_settings(self, candidate: Settings) -> None:
        """Refuse a combination the service could not run, before it is saved (422)."""
        mode = candidate.execution_mode
        if mode == self.settings.execution_mode and not (
                mode == "daytona" and not candidate.daytona_configured):
            return
        if mode == "daytona":
            if "daytona" not in self.executors:
                raise ValidationFailed("execution_mode daytona needs the Daytona SDK: pip install "
                                       "'agent-manager[daytona]'", [{"field": "execution_mode"}])
            if not candidate.daytona_configured:
                raise ValidationFailed("execution_mode daytona needs Daytona configured first: set daytona_api_key "
                                       "(or DAYTONA_API_KEY) and, if not the default, daytona_api_url",
                                       [{"field": "execution_mode"}])
        if mode == "sandbox":
            sandbox = self.executors.get("sandbox")
            availability = await sandbox.available() if sandbox is not None else None
            if availability is None or not availability.ok:
                reason = availability.reason if availability is not None else "not installed"
                raise ValidationFailed(f"execution_mode sandbox: the sandbox backend is unavailable: {reason}",
                                       [{"field": "execution_mode"}])

    async def apply_settings(self, changed: set[str]) -> None:
        """Make changed settings take effect now. Most need nothing (every component reads the
        shared Settings when it uses a value); these build something from them."""
        if self._runs is not None and "max_concurrent_runs" in changed:
            await self._runs.host_slots.resize()  # a raised limit starts queued runs now
        if changed & DAYTONA_CLIENT_FIELDS:
            self._rebuild_daytona()
        elif changed & {"daytona_warm_pool", "daytona_image", "daytona_snapshot"}:
            self._spawn(self._resize_pool(drain=bool(changed & {"daytona_image", "daytona_snapshot"})))
        forget_probe = getattr(self.executors.get("sandbox"), "forget_probe", None)
        if forget_probe is not None and any(name.startswith("sandbox_") for name in changed):
            forget_probe()  # its cached verdict was reached with the old limits
        if "run_retention_days" in changed:
            self._prune_wakeup.set()

    def _rebuild_daytona(self) -> None:
        """A new key, URL or target: new runs get a new executor (and client) at once; the old
        one finishes its running sandboxes, then closes. Sweep and warm pool follow."""
        old = self.executors.pop("daytona", None)
        try:
            from agent_manager.executors.daytona import DaytonaExecutor
            self.executors["daytona"] = DaytonaExecutor(self.settings, self.prefix)
        except ImportError:  # pragma: no cover - only without the SDK
            return
        if old is not None:
            self._spawn(self._retire(old))
        if self.settings.daytona_configured:
            self._spawn(self._prepare_daytona())

    @staticmethod
    async def _retire(executor: Executor) -> None:
        while getattr(executor, "running", None):
            await asyncio.sleep(1.0)
        try:
            await executor.close()
        except Exception as exc:  # reported, never fatal
            log.warning("closing the previous Daytona client failed: %s", exc)

    async def _resize_pool(self, drain: bool) -> None:
        from agent_manager.executors import daytona

        executor = self.executors.get("daytona")
        if isinstance(executor, daytona.DaytonaExecutor) and self.settings.daytona_configured:
            try:
                await executor.resize_pool(drain=drain)
            except Exception as exc:  # reported, never fatal
                log.warning("resizing the Daytona warm pool failed: %s", exc)

    async def _prune_loop(self) -> None:
        """Apply ``run_retention_days`` at start, hourly, and when the setting changes."""
        while True:
            if self.settings.run_retention_days and self._runs is not None:
                try:
                    pruned = self._runs.prune(self.settings.run_retention_days)
                    if pruned:
                        log.info("deleted %d run(s) older than %d days", pruned, self.settings.run_retention_days)
                except Exception:  # a bug, but never fatal to the service
                    log.exception("pruning old runs failed")
            self._prune_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._prune_wakeup.wait(), PRUNE_EVERY_S)

    async def _tidy_workspaces(self, workspaces: Workspaces) -> None:
        """Commit what runs interrupted by a stop left in their workspaces, then prune old ones
        now and every few hours (``workspace_retention_days``)."""
        try:
            settled = await workspaces.recover()
            if settled:
                log.warning("committed the work of %d run(s) interrupted by the last stop", settled)
        except Exception as exc:  # reported, never fatal
            log.warning("workspace recovery failed: %s", exc)
        while True:
            try:
                pruned = await workspaces.prune()
                if pruned:
                    log.info("discarded %d workspace(s) older than workspace_retention_days", pruned)
            except Exception as exc:
                log.warning("workspace pruning failed: %s", exc)
            await asyncio.sleep(WORKSPACE_PRUNE_EVERY_S)

    async def _prepare_daytona(self) -> None:
        """Sweep what a previous start of this instance left in Daytona, then fill the warm pool.

        In the background: an unreachable Daytona must not delay or break the service's start.
        """
        from agent_manager.executors import daytona, daytona_api

        try:
            # The SDK takes about a second to import: do it in a thread, not on the loop.
            await asyncio.to_thread(daytona_api.load_sdk)
            swept = await daytona.sweep(self.settings, instance=self.prefix)
            if swept:
                log.warning("deleted %d leftover Daytona sandbox(es) of this instance", swept)
            executor = self.executors["daytona"]
            if self.settings.daytona_warm_pool and isinstance(executor, daytona.DaytonaExecutor):
                await executor.warm(network=False)
        except Exception as exc:  # reported, never fatal
            log.warning("Daytona start-up sweep failed: %s", exc)

    async def interrupt(self) -> None:
        """The first half of stopping, done before the web server waits for its connections:
        every running orchestration and run ends ``interrupted`` and the event logs close, so
        open SSE streams send the final events and end instead of holding the stop up."""
        if self._interrupted:
            return
        self._interrupted = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        terminals, self._terminals = self._terminals, None
        if terminals is not None:  # their WebSockets close too; they hold host slots and sandboxes
            await terminals.shutdown()
        engine = self._orchestrations
        if engine is not None:  # before the runs: its steps are runs
            await engine.shutdown()
        if self._runs is not None:
            await self._runs.shutdown()
            self._runs.events.close()
        if engine is not None:
            engine.events.close()

    async def stop(self) -> None:
        await self.interrupt()
        self._orchestrations = None
        for executor in self.executors.values():
            try:
                await executor.close()
            except Exception:  # closing must not stop the others from closing
                log.exception("closing the %s backend failed", executor.name)
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
