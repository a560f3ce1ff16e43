"""Daytona backend: each run gets its own cloud sandbox, driven by the official async SDK.

The SDK (an optional extra) is imported lazily, only by the ``daytona*`` modules. Sandboxes carry
``agent-manager=<instance>`` and a unique run/pool label, so strays of a failed ``create()`` (the
SDK never cleans up) can be found and deleted; a run's sandbox is always deleted in a ``finally``.
Output is a ``run_async`` session command followed over the log WebSocket (a dropped stream is
reopened, skipping what was delivered, then the logs snapshot fills in). Secrets never reach create
params, the command line or a file: a POSIX ``sh`` prologue reads ``export`` lines from the
command's stdin, sent by ``send_session_command_input`` with ``suppress_input_echo``. 429/5xx are
retried with backoff, and every call has an explicit timeout plus our own deadline.

This module is the part on the service's event loop. All SDK work runs in ``daytona_core``, in a
worker process (``daytona_worker``, reached through ``daytona_link``): with thousands of runs the
SDK's work no longer shares the service's GIL, so it no longer delays the HTTP server (on a thread
of this process, ``daytona_loop``, it still did: notes 15f/15g). ``worker=False`` keeps the core on
such a thread instead (tests that look inside it). Details: docs/backends-daytona.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import Availability, Chunk, ExecSpec
from agent_manager.executors.daytona_api import AVAILABLE_TTL_S, NO_KEY, UNAVAILABLE_TTL_S, list_sandboxes, sweep
from agent_manager.executors.daytona_command import OUTPUT_QUEUE_CHUNKS, DaytonaExecution, build_command, env_payload
from agent_manager.executors.daytona_core import NOT_CONFIGURED, POOL_FIELDS, DaytonaCore
from agent_manager.executors.daytona_link import RemotePty, RemoteRun, WorkerLink
from agent_manager.executors.daytona_loop import DaytonaLoop, Handoff
from agent_manager.executors.daytona_settings import DaytonaSettings, daytona_section
from agent_manager.executors.daytona_wire import section_out
from agent_manager.metrics import create_histogram
from agent_manager.plugins import ISOLATED, REMOTE, BackendContext, BackendPlugin
from agent_manager.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from prometheus_client import Histogram

    from agent_manager.executors.daytona_api import Backoff, Reaper
    from agent_manager.executors.daytona_pty import BridgedPty

__all__ = ["DaytonaExecutor", "DaytonaRun", "build_command", "env_payload", "list_sandboxes", "sweep", "PLUGIN"]
# Fields of [daytona] the client (or the create limit) is built from: a change means a new executor.
CLIENT_FIELDS = frozenset({"api_key", "api_url", "target", "max_concurrent_creates"})


class DaytonaRun:
    """A Daytona run as the run layer sees it (``executors.base.Execution``), on the service's
    loop: output in per-tick batches from the Daytona loop, the exit code from its follower."""

    def __init__(self, bridge: DaytonaLoop) -> None:
        self._bridge = bridge
        self.outlet: Handoff[Chunk] = Handoff(bridge, OUTPUT_QUEUE_CHUNKS)
        self.exit_code: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._exit: asyncio.Future[int] | None = None
        self._on_exit: Callable[[DaytonaRun], None] | None = None
        self.execution: DaytonaExecution | None = None
        self.info: dict[str, str] = {}

    def attach(self, execution: DaytonaExecution) -> None:
        self.execution = execution
        self.info = execution.info  # the same dict: the follower adds to it before the exit is known

    async def output(self) -> AsyncIterator[Chunk]:
        async for batch in self.outlet.batches():
            # What came in one tick, neighbours of one stream joined: fewer, larger events.
            stream, parts = batch[0].stream, [batch[0].text]
            for chunk in batch[1:]:
                if chunk.stream != stream:
                    yield Chunk(stream, "".join(parts))
                    stream, parts = chunk.stream, []
                parts.append(chunk.text)
            yield Chunk(stream, "".join(parts))

    def exited(self, callback: Callable[[DaytonaRun], None]) -> None:
        """``callback(self)`` on this loop once the exit is known, before ``wait`` returns it."""
        self._exit = asyncio.wrap_future(self.exit_code)
        self._on_exit = callback

        def over(done: asyncio.Future[int]) -> None:
            self._over()
            if not done.cancelled():
                done.exception()  # retrieved: wait() raises it to whoever asks, no "never retrieved" log
        self._exit.add_done_callback(over)

    def _over(self) -> None:
        callback, self._on_exit = self._on_exit, None
        if callback is not None:
            callback(self)

    async def wait(self) -> int:
        if self._exit is None:
            self._exit = asyncio.wrap_future(self.exit_code)
        try:
            return await asyncio.shield(self._exit)
        finally:
            # Done before this wait: awaiting it took no turn of the loop, so its callbacks
            # (``exited``'s among them) may still be queued. Run that one now, not after.
            if self._exit.done():
                self._over()

    async def cancel(self) -> None:
        """Ends the command and deletes the sandbox (on the Daytona loop); safe to call twice."""
        if self.execution is None:
            return
        with contextlib.suppress(ExecutorUnavailable):  # the executor closed: it cancelled every run
            await self._bridge.run(self.execution.cancel())


class DaytonaExecutor:
    """One sandbox per run; optionally a warm pool of ready sandboxes per sandbox shape.

    The service's side of the backend: each call is handed to ``DaytonaCore`` in the worker
    process (or on the executor's own thread), started at first use and ended by ``close``. Availability
    answers are cached (``AVAILABLE_TTL_S`` when good, ``UNAVAILABLE_TTL_S`` when not, forgotten
    when the [daytona] section changes), so listing backends never waits on an unreachable API
    more than once per ``UNAVAILABLE_TTL_S``.

    Metrics (``KeepsSandboxes``): ``create_seconds``, a fixed-bucket histogram of seconds per
    successful create (pool refills included), and ``live`` (sandboxes running a command now).
    """

    name = "daytona"

    def __init__(self, settings: Settings, instance_id: str, *, retry_attempts: int = 5,
                 retry_base_s: float = 0.5, section: DaytonaSettings | None = None, worker: bool = True) -> None:
        self.settings, self.instance_id = settings, instance_id
        self._section = section if section is not None else daytona_section(settings)
        self._attempts, self._base_delay = retry_attempts, retry_base_s
        self.create_seconds: Histogram | None = create_histogram()
        self.running: set[DaytonaRun | RemoteRun] = set()  # started and not yet over (the service retires on it)
        self._known: tuple[Availability, float] | None = None
        self._checking: asyncio.Task[Availability] | None = None
        self._generation = 0
        # worker=True (the service's choice): the SDK in a child process (daytona_link). False: on
        # a thread of this process (DaytonaLoop + DaytonaCore; tests that look inside the core).
        self.link: WorkerLink | None = WorkerLink(self._hello, self.create_seconds) if worker else None
        self.bridge = DaytonaLoop()
        self._core: DaytonaCore | None = None
        if not worker:
            self._core = DaytonaCore(settings, instance_id, retry_attempts=retry_attempts,
                                     retry_base_s=retry_base_s, section=self._section)
            self._core.create_seconds = self.create_seconds
        # An executor dropped without close() (a test, a failed start): its thread or worker ends with it.
        weakref.finalize(self, self.link.abandon if self.link is not None else self.bridge.abandon)

    def _hello(self) -> dict[str, Any]:
        """The worker's first message: what it builds its ``DaytonaCore`` from (the key included)."""
        return {"section": section_out(self._section), "instance": self.instance_id, "attempts": self._attempts,
                "base_delay": self._base_delay, "grace": self.settings.kill_grace_s}

    @property
    def core(self) -> DaytonaCore:
        """The in-process core (``worker=False`` only)."""
        if self._core is None:
            raise AttributeError("the Daytona SDK runs in the worker process: no core in this one")
        return self._core

    @property
    def worker_pid(self) -> int | None:
        """The worker process's id while one runs (``worker=True``)."""
        return self.link.pid if self.link is not None else None

    @property
    def section(self) -> DaytonaSettings:
        return self._section

    @property
    def backoff(self) -> Backoff:
        return self.core.backoff

    @property
    def reaper(self) -> Reaper:
        return self.core.reaper

    @property
    def attempts(self) -> int:
        return self._attempts

    async def stats(self) -> dict[str, int]:
        """The core's counters: 429s absorbed, commands running, sandboxes the reaper still has
        to delete, sandboxes in the warm pool (wherever the core runs), the worker's heap trims."""
        if self.link is not None:
            if not self.link.alive:
                return {"rate_limited": 0, "live": 0, "reaper_sandboxes": 0, "pooled": 0, "heap_trims": 0}
            return dict(await self.link.call("stats", spawn=False))
        core = self.core
        return {"rate_limited": core.backoff.rate_limited, "live": core.live,
                "reaper_sandboxes": len(core.reaper.sandboxes), "pooled": sum(len(p) for p in core._pool.values()),
                "heap_trims": 0}  # the heap upkeep is the worker's (daytona_heap)

    async def tune(self, base_delay: float) -> None:
        """The shared back-off's base pause (tests shorten the production 0.5 s)."""
        if self.link is not None:
            await self.link.call("tune", base_delay=base_delay)
        else:
            self.core.backoff.base_delay = base_delay

    @property
    def live(self) -> int:
        """Sandboxes running a command for this executor now."""
        return self.link.live if self.link is not None else self.core.live

    def sandboxes_live(self) -> int:
        return self.live

    async def available(self) -> Availability:
        """The cached answer, else one check on the Daytona loop shared by every caller meanwhile
        (it goes on, and is kept, even when a caller stops waiting)."""
        if not self.section.configured:
            return Availability(False, NO_KEY)
        if self._known is not None and self._known[1] > time.monotonic():
            return self._known[0]
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._check(self._generation))
        return await asyncio.shield(self._checking)

    async def _check(self, generation: int) -> Availability:
        try:
            if self.link is not None:
                answer = await self.link.call("available")
                found = Availability(bool(answer["ok"]), str(answer["reason"]))
            else:
                found = await self.bridge.run(self.core.check_available())
        except ExecutorUnavailable as exc:
            return Availability(False, exc.message)
        if generation == self._generation:  # not asked under settings that have changed since
            self._known = found, time.monotonic() + (AVAILABLE_TTL_S if found.ok else UNAVAILABLE_TTL_S)
        return found

    def forget_availability(self) -> None:
        self._generation += 1
        self._known, self._checking = None, None

    async def start(self, spec: ExecSpec) -> DaytonaRun | RemoteRun:
        if not spec.argv:
            raise ExecutionError("nothing to run: empty argv")
        if not self.section.configured:
            raise ExecutorUnavailable(NO_KEY)
        if self.link is not None:
            remote = await RemoteRun.start(self.link, spec, self.settings.kill_grace_s)
            self.running.add(remote)
            remote.exited(self.running.discard)
            return remote
        run = DaytonaRun(self.bridge)

        async def orphaned(execution: DaytonaExecution) -> None:  # started as its caller was cancelled
            run.outlet.abandon()
            await execution.cancel()
        run.attach(await self.bridge.run(self.core.start(spec, run.outlet, run.exit_code), orphaned))
        self.running.add(run)
        run.exited(self.running.discard)
        return run

    # -- what the service, terminals and /api/sandboxes ask of a backend (docs/plugins.md) --------

    @staticmethod
    def workspace_path(workspace: Path, name: str) -> str:
        """The workspace is uploaded to the directory the command starts in."""
        return f"./{name}"

    async def open_pty(self, spec: ExecSpec, cols: int, rows: int, shell: bool) -> BridgedPty | RemotePty:
        from agent_manager.executors.daytona_pty import QUEUE_CHUNKS, BridgedPty, DaytonaPty

        if self.link is not None:
            return await RemotePty.open(self.link, spec, cols, rows, shell)

        outlet: Handoff[bytes] = Handoff(self.bridge, QUEUE_CHUNKS)

        async def orphaned(pty: DaytonaPty) -> None:
            outlet.abandon()
            await pty.close()
        pty = await self.bridge.run(self.core.open_pty(spec, cols, rows, shell, outlet), orphaned)
        return BridgedPty(self.bridge, pty, outlet)

    async def prepare(self) -> None:
        """At start (in the background: an unreachable Daytona must not delay the service):
        sweep what a previous start of this instance left, then fill the warm pool."""
        if not self.section.configured:
            if self._core is not None:
                self._core.skip_sweep()
            return
        if self.link is not None:
            await self.link.call("prepare")
            return
        await self.bridge.run(self.core.prepare())

    async def settings_changed(self, changed: set[str]) -> None:
        """``changed``: fields of [daytona]. Availability is asked again; a new pool size follows
        at once; a new image or snapshot drains the pool first."""
        self.forget_availability()
        if self.link is not None:  # the worker gets the whole section (it has its own copy)
            if self.link.alive:
                await self.link.call("settings", spawn=False, section=section_out(self.section),
                                     changed=sorted(changed), grace=self.settings.kill_grace_s)
            return
        if changed & POOL_FIELDS and self.section.configured and not self.bridge.closed:
            await self.bridge.run(self.core.settings_changed(changed))

    async def warm(self, network: bool = True) -> None:
        if self.link is not None:
            await self.link.call("warm", network=network)
            return
        await self.bridge.run(self.core.warm(network))

    async def resize_pool(self, drain: bool = False) -> None:
        if self.link is not None:
            await self.link.call("resize_pool", drain=drain)
            return
        await self.bridge.run(self.core.resize_pool(drain))

    async def list_sandboxes(self) -> list[dict[str, Any]]:
        """Every sandbox labelled by Agent Manager (any instance), for /api/sandboxes."""
        if not self.section.configured:
            return []
        if self.link is not None:
            return list(await self.link.call("list"))
        return await self.bridge.run(self.core.list_sandboxes())

    async def sweep_sandboxes(self, all_instances: bool = False) -> int:
        """Delete labelled sandboxes no live run or warm pool of this service uses."""
        if not self.section.configured:
            raise ExecutorUnavailable(NOT_CONFIGURED)
        if self.link is not None:
            return int(await self.link.call("sweep", all=all_instances))
        return await self.bridge.run(self.core.sweep_sandboxes(all_instances))

    async def close(self) -> None:
        """End every run and delete pooled sandboxes (in the worker, or on the Daytona loop), then
        stop the worker (or the thread)."""
        if self.link is not None:
            await self.link.close()
            return

        async def close_core() -> None:
            await self.bridge.settle_calls()  # e.g. a start cancelled mid-create: its delete needs the client
            await self.core.close()
        try:
            if self.bridge.loop is not None and not self.bridge.closed:
                await self.bridge.run(close_core())
        finally:
            await self.bridge.close()


def _setup_problem(settings: Settings) -> str | None:
    if importlib.util.find_spec("daytona") is None:
        return "the Daytona SDK is not installed: pip install 'agent-manager[daytona]'"
    return None if daytona_section(settings).configured else NOT_CONFIGURED


def _build(ctx: BackendContext) -> DaytonaExecutor:
    section = ctx.section if isinstance(ctx.section, DaytonaSettings) else None
    return DaytonaExecutor(ctx.settings, ctx.prefix, section=section)


PLUGIN = BackendPlugin(
    name="daytona", title="daytona (cloud)", capabilities=frozenset({ISOLATED, REMOTE}), factory=_build,
    description="A Daytona cloud sandbox per run (official SDK, optional extra agent-manager[daytona]); "
                "the workspace travels as a git bundle and comes back as commits.",
    settings_model=DaytonaSettings, setup_problem=_setup_problem, rebuild_on=CLIENT_FIELDS)
