"""Daytona backend, the part on the Daytona loop: sandboxes, warm pool, retries, runs.

Everything here runs on the executor's own thread and event loop (``daytona_loop``); the
service's loop talks to it only through ``daytona.DaytonaExecutor``. Each run gets its own
cloud sandbox, driven by the official async SDK.

The SDK (an optional extra) is imported lazily, only here. Sandboxes carry ``agent-manager=<instance>``
and a unique run/pool label, so strays of a failed ``create()`` (the SDK never cleans up) can be found
and deleted; a run's sandbox is always deleted in a ``finally``. Output is a ``run_async`` session
command followed over the log WebSocket (a dropped stream is reopened, skipping what was delivered,
then the logs snapshot fills in). Secrets never reach create params, the command line or a file: a
POSIX ``sh`` prologue reads ``export`` lines from the command's stdin, sent by
``send_session_command_input`` with ``suppress_input_echo``. 429/5xx are retried with backoff, and
every call has an explicit timeout plus our own deadline. Details: docs/backends-daytona.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import Availability, ExecSpec
from agent_manager.executors.daytona_api import (
    LABEL,
    POOL_LABEL,
    REQUEST_TIMEOUT_S,
    RUN_LABEL,
    Backoff,
    Profile,
    Reaper,
    T,
    delete_sandbox,
    list_labelled,
    list_sandboxes,
    load_sdk,
    make_client,
    retrying,
    sandbox_state,
    sweep,
)
from agent_manager.executors.daytona_command import DaytonaExecution, ExitSink
from agent_manager.executors.daytona_settings import DaytonaSettings, daytona_section
from agent_manager.settings import Settings

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox
    from prometheus_client import Histogram

    from agent_manager.executors.base import Chunk
    from agent_manager.executors.daytona_loop import Outlet
    from agent_manager.executors.daytona_pty import DaytonaPty

log = logging.getLogger("agent_manager.executors.daytona")
POOL_FIELDS = frozenset({"warm_pool", "image", "snapshot"})
NOT_CONFIGURED = ("Daytona is not configured: set daytona.api_key (or DAYTONA_API_KEY) and, if not the default, "
                  "daytona.api_url")


class DaytonaCore:
    """One sandbox per run; optionally a warm pool of ready sandboxes per sandbox shape.

    Metrics (``KeepsSandboxes``): ``create_seconds``, a fixed-bucket histogram of seconds per
    successful create (pool refills included), and ``live`` (sandboxes running a command now).

    Scale: one SDK client (one aiohttp session) serves every run, a run is a few coroutines
    (no thread), at most ``daytona.max_concurrent_creates`` creates are in flight (the rest
    wait their turn in order), and a 429 pauses every call through one shared ``Backoff``.
    """

    name = "daytona"

    def __init__(self, settings: Settings, instance_id: str, *, retry_attempts: int = 5,
                 retry_base_s: float = 0.5, section: DaytonaSettings | None = None) -> None:
        self.settings, self.instance_id = settings, instance_id
        # This backend's own section ([daytona]): the plugin's factory passes it; read at use time.
        self.section = section if section is not None else daytona_section(settings)
        # Set by the owner (the executor's histogram, or the worker's forwarder to it): the core
        # never imports the metrics module, which the worker process does not need.
        self.create_seconds: Histogram | None = None
        self.attempts, self.base_delay = retry_attempts, retry_base_s
        self.backoff = Backoff(retry_base_s)
        self.reaper = Reaper(self.delete, self._delete_labelled)
        self._creates = asyncio.Semaphore(self.section.max_concurrent_creates)
        self._client_obj: AsyncDaytona | None = None
        self._pool: dict[Profile, list[AsyncSandbox]] = {}
        self._refills: dict[Profile, asyncio.Task[None]] = {}
        self.running: set[DaytonaExecution] = set()
        self.terminal_ids: set[str] = set()  # sandboxes of open terminals (executors.daytona_pty)
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Unique labels given out before the start-up sweep finished: that sweep spares them.
        self._issued: set[str] | None = set()

    def issue_label(self) -> str:
        label = uuid.uuid4().hex
        if self._issued is not None:
            self._issued.add(label)
        return label

    async def call(self, what: str, call: Callable[[], Awaitable[T]], timeout: float = REQUEST_TIMEOUT_S,
                   idempotent: bool = True) -> T:
        return await retrying(what, call, timeout, attempts=self.attempts, base_delay=self.base_delay,
                              idempotent=idempotent, backoff=self.backoff)

    async def delete(self, sb: AsyncSandbox) -> None:
        await delete_sandbox(sb, self.attempts, self.base_delay, self.backoff)

    def client(self) -> AsyncDaytona:
        if self._client_obj is None:
            self._client_obj = make_client(self.section)
        return self._client_obj

    def keep_ids(self) -> set[str]:
        """Sandboxes this executor is using right now (running or pooled): never swept."""
        return {run.info["sandbox_id"] for run in self.running} | self.terminal_ids | {
            sb.id for pool in self._pool.values() for sb in pool}

    async def check_available(self) -> Availability:
        """One check (listing this instance's sandboxes); ``DaytonaExecutor.available`` caches it."""
        try:
            sdk = load_sdk()
            client = self.client()
        except ExecutorUnavailable as exc:
            return Availability(False, exc.message)
        try:
            await asyncio.wait_for(list_labelled(client, {LABEL: self.instance_id}, attempts=1), 15)
        except ExecutionError as exc:
            if isinstance(exc.__cause__, sdk.DaytonaRateLimitError):  # it answered and knew the key
                self.backoff.hit(None)
                return Availability(True)
            if isinstance(exc.__cause__, sdk.DaytonaAuthenticationError | sdk.DaytonaForbiddenError):
                return Availability(False, f"Daytona rejected the API key: {exc.__cause__}")
            return Availability(False, self._unreachable(exc.__cause__ or exc))
        except (sdk.DaytonaAuthenticationError, sdk.DaytonaForbiddenError) as exc:
            return Availability(False, f"Daytona rejected the API key: {exc}")
        except Exception as exc:  # whatever it is, the user is told the backend cannot be used now
            return Availability(False, f"Daytona API unreachable: {exc or type(exc).__name__}")
        return Availability(True)

    def _unreachable(self, exc: BaseException) -> str:
        """Why the API could not be used, in words that lead to the fix. The SDK's own message
        may end in an empty server answer ("Failed to list sandboxes: " for a bare 404): then the
        HTTP status says it, and a 404 points at ``daytona.api_url`` (a URL missing its ``/api``)."""
        text = str(exc).strip().rstrip(":").strip() or type(exc).__name__
        status = getattr(exc, "status_code", None)
        if status is not None:
            text += f" (HTTP {status})"
        if status == 404:
            url = self.section.api_url or "the default URL"
            text += f": is daytona.api_url right? {url} does not answer as the Daytona API"
            if not url.rstrip("/").endswith("/api"):
                text += " (its URL usually ends in /api)"
        return f"Daytona API unreachable: {text}"

    def _profile(self, spec: ExecSpec) -> Profile:
        """Sandboxes are interchangeable only with the same network and size."""
        res = spec.resources
        sized = bool(self.section.image) and any(
            v is not None for v in (res.cpu, res.memory_mb, res.disk_gb))
        return (spec.network, res.cpu, res.memory_mb, res.disk_gb) if sized else (spec.network,)

    def _params(self, profile: Profile, labels: dict[str, str]) -> Any:
        sdk, s = load_sdk(), self.section
        common: dict[str, Any] = {
            "labels": labels, "auto_stop_interval": s.auto_stop_minutes,
            "auto_delete_interval": s.auto_delete_minutes, "network_block_all": not profile[0]}
        if not s.image:  # a snapshot fixes its own size: resources only work with an image
            return sdk.CreateSandboxFromSnapshotParams(snapshot=s.snapshot, **common)
        resources = None
        if len(profile) > 1:
            _, cpu, memory_mb, disk_gb = profile
            resources = sdk.Resources(cpu=math.ceil(cpu) if cpu else None, disk=disk_gb,
                                      memory=math.ceil(memory_mb / 1024) if memory_mb else None)
        return sdk.CreateSandboxFromImageParams(image=s.image, resources=resources, **common)

    async def _create(self, profile: Profile, labels: dict[str, str]) -> AsyncSandbox:
        """Create and wait for ``started``; on any failure delete whatever carries our unique label."""
        unique = {k: v for k, v in labels.items() if k in (RUN_LABEL, POOL_LABEL)}
        timeout = self.section.create_timeout_s
        params = self._params(profile, labels)
        async def attempt() -> AsyncSandbox:
            # create() is POST then polling GETs: a failure (a 429 on a poll, say) may come after
            # the sandbox exists. Delete it before the retry creates another one.
            try:
                created: AsyncSandbox = await self.client().create(params, timeout=timeout)
            except BaseException:
                await asyncio.shield(self._delete_labelled(unique))
                raise
            return created

        try:
            async with self._creates:  # in order: the first to ask is the first to create
                started = time.monotonic()
                sb = await self.call("create sandbox", attempt, timeout)
        except BaseException as exc:
            await asyncio.shield(self._delete_labelled(unique))
            if isinstance(exc, ExecutionError) and isinstance(exc.__cause__, load_sdk().DaytonaTimeoutError):
                raise ExecutionError(f"Daytona sandbox did not start within {timeout:.0f}s: {exc}") from exc
            raise
        if self.create_seconds is not None:
            self.create_seconds.observe(time.monotonic() - started)
        return sb

    async def _delete_labelled(self, labels: dict[str, str], pool_only: bool = False) -> bool:
        """Delete sandboxes found by label: strays of failed creates, or unfinished pool ones.
        False (and the reaper takes over, for a run's unique label) when that failed."""
        try:
            for sb in await list_labelled(self.client(), labels, self.attempts, self.backoff):
                if not pool_only or POOL_LABEL in sb.labels:
                    await self.delete(sb)
        except ExecutionError as exc:
            log.error("could not clean up Daytona sandboxes labelled %s: %s", labels, exc)
            if not pool_only and labels not in self.reaper.labels:
                self.reaper.labelled(labels)
            return False
        return True

    async def warm(self, network: bool = True) -> None:
        """Fill the pool for the default shape and wait for it (otherwise filled at first use)."""
        await self._ensure_refill(self._profile(ExecSpec(argv=["true"], network=network)), wait=True)

    async def _ensure_refill(self, profile: Profile, wait: bool = False) -> None:
        if self.section.warm_pool <= 0 or self._closed:
            return
        task = self._refills.get(profile)
        if task is None or task.done():
            task = self._refills[profile] = asyncio.create_task(self._refill(profile))
        if wait:
            await asyncio.shield(task)

    async def _refill(self, profile: Profile) -> None:
        pool = self._pool.setdefault(profile, [])
        need = self.section.warm_pool - len(pool)
        labels = [{LABEL: self.instance_id, POOL_LABEL: self.issue_label()} for _ in range(need)]
        results = await asyncio.gather(*(self._create(profile, lb) for lb in labels), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("warm pool: could not create a sandbox: %s", result)
            elif self._closed:
                await self.delete(result)
            else:
                pool.append(result)

    async def _take(self, profile: Profile, labels: dict[str, str]) -> AsyncSandbox | None:
        """A pooled sandbox (started again if it auto-stopped while idle, relabelled for the run)."""
        pool, timeout = self._pool.get(profile, []), self.section.create_timeout_s
        sandbox = None
        while pool and sandbox is None:
            candidate = pool.pop(0)
            try:
                await self.call("refresh sandbox", lambda c=candidate: c.refresh_data(  # type: ignore[misc]
                    request_timeout=REQUEST_TIMEOUT_S))
                if sandbox_state(candidate) != "started":
                    await self.call("start sandbox", lambda c=candidate: c.start(  # type: ignore[misc]
                        timeout=timeout), timeout)
                await self.call("label sandbox", lambda c=candidate: c.set_labels(  # type: ignore[misc]
                    labels, request_timeout=REQUEST_TIMEOUT_S))
                sandbox = candidate
            except ExecutionError as exc:
                log.warning("warm pool: discarding sandbox %s: %s", candidate.id, exc)
                with contextlib.suppress(ExecutionError):
                    await self.delete(candidate)
        await self._ensure_refill(profile)
        return sandbox

    async def sandbox_for(self, spec: ExecSpec, unique: str) -> tuple[AsyncSandbox, bool]:
        """A started sandbox of ``spec``'s shape labelled for one run or terminal (``unique``),
        from the warm pool when it has one (then True) or created now."""
        if self._closed:
            raise ExecutorUnavailable("the Daytona executor is closed")
        self.client()  # ExecutorUnavailable early: extra missing or no key
        labels = {**spec.labels, LABEL: self.instance_id, RUN_LABEL: unique}  # ours cannot be overridden
        profile = self._profile(spec)
        sandbox = await self._take(profile, labels)
        if sandbox is not None:
            return sandbox, True
        return await self._create(profile, labels), False

    async def start(self, spec: ExecSpec, outlet: Outlet[Chunk],
                    exit_code: ExitSink) -> DaytonaExecution:
        """A sandbox with the command started in it; its output goes to ``outlet`` and its exit
        code (or error) to ``exit_code``, both read on the service's loop."""
        if not spec.argv:
            raise ExecutionError("nothing to run: empty argv")
        run_id = self.issue_label()
        sandbox, pooled = await self.sandbox_for(spec, run_id)
        execution = DaytonaExecution(self, sandbox, spec, run_id, outlet, exit_code)
        execution.info["pool"] = "hit" if pooled else "miss"
        self.running.add(execution)
        try:
            await execution.launch()
        except BaseException:
            await asyncio.shield(execution.release())
            raise
        return execution

    # -- what the service, terminals and /api/sandboxes ask of a backend (docs/plugins.md) --------

    async def open_pty(self, spec: ExecSpec, cols: int, rows: int, shell: bool,
                       outlet: Outlet[bytes]) -> DaytonaPty:
        from agent_manager.executors.daytona_pty import open_pty

        return await open_pty(self, spec, cols, rows, shell, outlet)

    def skip_sweep(self) -> None:
        """Not configured: there is nothing to sweep, so labels need no sparing."""
        self._issued = None

    async def prepare(self) -> None:
        """At start (in the background: an unreachable Daytona must not delay the service):
        sweep what a previous start of this instance left, then fill the warm pool."""
        if not self.section.configured:
            self._issued = None
            return
        load_sdk()  # about a second the first time: on the Daytona thread, not the service's loop
        try:  # runs may start meanwhile: their sandboxes are this executor's, not leftovers
            swept = await sweep(self.section, keep=self.keep_ids, instance=self.instance_id,
                                spare=self._issued if self._issued is not None else frozenset())
        finally:
            self._issued = None
        if swept:
            log.warning("deleted %d leftover Daytona sandbox(es) of this instance", swept)
        if self.section.warm_pool:
            await self.warm(network=False)

    async def settings_changed(self, changed: set[str]) -> None:
        """``changed``: fields of [daytona]. A new pool size follows at once; a new image or
        snapshot drains the pool first."""
        if changed & POOL_FIELDS and self.section.configured and not self._closed:
            task = asyncio.create_task(self._resize_logged(drain=bool(changed & {"image", "snapshot"})))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resize_logged(self, drain: bool) -> None:
        try:
            await self.resize_pool(drain=drain)
        except Exception as exc:  # reported, never fatal
            log.warning("resizing the Daytona warm pool failed: %s", exc)

    async def list_sandboxes(self) -> list[dict[str, Any]]:
        """Every sandbox labelled by Agent Manager (any instance), for /api/sandboxes."""
        if not self.section.configured:
            return []
        keep = self.keep_ids()
        return [{**item, "in_use": item["id"] in keep, "this_instance": item["instance"] == self.instance_id}
                for item in await list_sandboxes(self.section)]

    async def sweep_sandboxes(self, all_instances: bool = False) -> int:
        """Delete labelled sandboxes no live run or warm pool of this service uses."""
        if not self.section.configured:
            raise ExecutorUnavailable(NOT_CONFIGURED)
        return await sweep(self.section, keep=self.keep_ids, instance=None if all_instances else self.instance_id)

    @property
    def live(self) -> int:
        """Sandboxes running a command for this executor now."""
        return len(self.running)

    def sandboxes_live(self) -> int:
        return self.live

    async def close(self) -> None:
        """Stop refills, cancel running executions, delete pooled sandboxes, close the client."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._refills.values():
            task.cancel()
        await asyncio.gather(*self._refills.values(), return_exceptions=True)
        await asyncio.gather(*(run.cancel() for run in list(self.running)), return_exceptions=True)
        for sb in [sb for pool in self._pool.values() for sb in pool]:
            with contextlib.suppress(ExecutionError):
                await self.delete(sb)
        self._pool.clear()
        await self.reaper.close()
        if self._client_obj is not None:
            if self._refills:  # a create cancelled mid-flight left no id behind: find it by label
                await self._delete_labelled({LABEL: self.instance_id}, pool_only=True)
            await self._client_obj.close()
            self._client_obj = None


    async def resize_pool(self, drain: bool = False) -> None:
        """Follow a changed ``daytona.warm_pool`` at once (or, with ``drain``, a new image or
        snapshot): delete pooled sandboxes beyond the new size (all of them when draining),
        then fill every pool up to the new size."""
        keep = 0 if drain else self.section.warm_pool
        extra = []
        for pool in self._pool.values():
            extra += pool[keep:]
            del pool[keep:]
        for sb in extra:
            with contextlib.suppress(ExecutionError):
                await self.delete(sb)
        for profile in list(self._pool):
            await self._ensure_refill(profile, wait=True)
        await self.warm(network=False)
