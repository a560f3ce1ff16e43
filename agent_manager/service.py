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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_manager import plugins
from agent_manager.errors import ConfigError, ExecutorUnavailable, ValidationFailed
from agent_manager.executors.base import Executor, Resources
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


def check_registry() -> None:
    """Fail at start, with a clear message, when the built-in backends are not registered: only
    stale package metadata does that (an old install, or an agent_manager.egg-info left in a
    checkout that is on sys.path), and a service without backends could run nothing."""
    if not any(entry.builtin for entry in plugins.backend_entries()):
        raise ConfigError("no built-in backends are registered: the installed metadata of agent-manager has no "
                          f"{plugins.BACKEND_GROUP} entry points. Reinstall it (pip install agent-manager, or "
                          "pip install -e . in a checkout) and remove any stale agent_manager.egg-info.")


def build_executors(settings: Settings, prefix: str,
                    environ: dict[str, str]) -> tuple[dict[str, Executor], dict[str, str]]:
    """Every registered backend's executor, built by its plugin (plugins.py); ``environ`` is
    the service's environment, read once here (backends never read it). A factory that fails
    makes that backend unavailable with the reason (``GET /api/backends``), never the service."""
    check_registry()
    executors: dict[str, Executor] = {}
    problems: dict[str, str] = {}
    for name, plugin in plugins.backends().items():
        try:
            executor = build_executor(plugin, settings, prefix, environ)
        except Exception as exc:
            problems[name] = settings.scrub(f"could not be started: {type(exc).__name__}: {exc}")
            log.error("the %s backend %s", name, problems[name])
            continue
        executors[name] = executor
    return executors, problems


def build_executor(plugin: plugins.BackendPlugin, settings: Settings, prefix: str,
                   environ: Mapping[str, str]) -> Executor:
    executor = plugin.factory(plugins.BackendContext(settings=settings, section=settings.section(plugin.name),
                                                     prefix=prefix, environ=environ))
    if getattr(executor, "name", None) != plugin.name:
        raise TypeError(f"its factory built an executor called {getattr(executor, 'name', None)!r}")
    return executor


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = tag_prefix(settings)
        self.db: Database | None = None
        self.executors: dict[str, Executor] = {}
        self.backend_problems: dict[str, str] = {}  # backends whose executor could not be built, and why
        self._environ: dict[str, str] = {}
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
        self._environ = dict(os.environ)
        self.executors, self.backend_problems = build_executors(self.settings, self.prefix, self._environ)
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
        for name, executor in self.executors.items():
            self._spawn(self._prepare(name, executor))
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
        if mode == plugins.AUTO:
            return
        plugin = plugins.backends().get(mode)
        setup = plugin.setup_problem if plugin is not None else None
        problem = setup(candidate) if setup is not None else None
        if mode == self.settings.execution_mode and problem is None:
            return
        def refuse(why: str) -> ValidationFailed:  # the detail's own sentence is shown under the field
            return ValidationFailed(f"execution_mode {mode}: {why}", [{"field": "execution_mode", "message": why}])

        if plugin is None or mode not in self.executors:
            why = self.backend_problems.get(mode) or "it is not installed"
            raise refuse(f"the {mode} backend is unavailable: {why}")
        if problem is not None:
            raise refuse(f"{mode} needs setting up first: {problem}")
        if plugins.HOST in plugin.capabilities:  # a cheap local probe; a remote one would need the network
            availability = await self.executors[mode].available()
            if not availability.ok:
                raise refuse(f"the {mode} backend is unavailable: {availability.reason}")

    async def apply_settings(self, changed: set[str]) -> None:
        """Make changed settings take effect now. Most need nothing (every component reads the
        shared Settings and its sections when it uses a value). Keyed by section: a backend whose
        section's changed fields include one its plugin names in ``rebuild_on`` gets a new executor,
        others are told which fields of their section changed (``settings_changed``)."""
        if self._runs is not None and "max_concurrent_runs" in changed:
            await self._runs.host_slots.resize()  # a raised limit starts queued runs now
        for name, plugin in plugins.backends().items():
            executor = self.executors.get(name)
            own = {key.partition(".")[2] for key in changed if key.startswith(name + ".")}  # its section's
            if executor is None or not own:
                continue
            if own & plugin.rebuild_on:
                self._rebuild(plugin)
                continue
            hook = getattr(executor, "settings_changed", None)
            if hook is not None:
                try:
                    await hook(own)
                except Exception as exc:  # reported, never fatal
                    log.warning("the %s backend could not follow the changed settings: %s", name, exc)
        if "run_retention_days" in changed:
            self._prune_wakeup.set()

    def _rebuild(self, plugin: plugins.BackendPlugin) -> None:
        """New runs get a new executor (e.g. a client for a new key or URL) at once; the old one
        finishes its running work, then closes. Its start-up work (``prepare``) runs again."""
        old = self.executors.pop(plugin.name, None)
        try:
            new = self.executors[plugin.name] = build_executor(plugin, self.settings, self.prefix, self._environ)
        except Exception as exc:
            log.error("the %s backend could not be rebuilt: %s", plugin.name, exc)
            self.backend_problems[plugin.name] = f"could not be started: {type(exc).__name__}: {exc}"
        else:
            self.backend_problems.pop(plugin.name, None)
            self._spawn(self._prepare(plugin.name, new))
        if old is not None:
            self._spawn(self._retire(old))

    @staticmethod
    async def _retire(executor: Executor) -> None:
        while getattr(executor, "running", None):
            await asyncio.sleep(1.0)
        try:
            await executor.close()
        except Exception as exc:  # reported, never fatal
            log.warning("closing the previous %s executor failed: %s", executor.name, exc)

    @staticmethod
    async def _prepare(name: str, executor: Executor) -> None:
        """A backend's optional start-up work (e.g. sweeping what a crashed predecessor left in
        the cloud), in the background: an unreachable service must not delay or break ours."""
        prepare = getattr(executor, "prepare", None)
        if prepare is None:
            return
        try:
            await prepare()
        except Exception as exc:  # reported, never fatal
            log.warning("the %s backend's start-up work failed: %s", name, exc)

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
