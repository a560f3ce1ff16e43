"""The Daytona API through the official SDK: client, retries with backoff, listing and deleting.

The SDK (an optional extra) is imported lazily, only by the ``daytona*`` executor modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.daytona_settings import DaytonaSettings

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox

log = logging.getLogger("agent_manager.executors.daytona")
T = TypeVar("T")
Profile = tuple[Any, ...]

LABEL, RUN_LABEL, POOL_LABEL = "agent-manager", "agent-manager-run", "agent-manager-pool"
# How long an availability answer is kept (DaytonaExecutor.available; docs/backends-daytona.md).
AVAILABLE_TTL_S = 300.0
UNAVAILABLE_TTL_S = 30.0
NO_KEY = "Daytona is not configured: set daytona.api_key (or DAYTONA_API_KEY)"
DEFAULT_API_URL = "https://app.daytona.io/api"
INSTALL_HINT = "the daytona extra is not installed: pip install 'agent-manager[daytona]'"
REQUEST_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 600
DELETE_TIMEOUT_S = 60.0
CLIENT_SLACK_S = 10.0  # our own deadline on top of the SDK's, in case a call never returns
STREAM_ATTEMPTS = 3
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_RATE_LIMITED = 50  # 429s one call absorbs (with the shared back-off) before it fails
NOT_FOUND_MARK = "agent-manager: executable not found in the sandbox: "
STDIN_NAME = ".agent-manager-stdin"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

def load_sdk() -> Any:
    """The ``daytona`` module, imported on first use so the package works without the extra."""
    try:
        import daytona
    except ImportError as exc:
        raise ExecutorUnavailable(INSTALL_HINT) from exc
    return daytona


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else getattr(exc.__cause__, "status", None)


def _retryable(exc: BaseException, idempotent: bool) -> bool:
    """429 was rejected before anything happened, so it is always safe to repeat."""
    return status_of(exc) == 429 or idempotent and (
        status_of(exc) in RETRY_STATUSES or isinstance(exc, load_sdk().DaytonaConnectionError))


class Backoff:
    """One back-off shared by every call of an executor: a 429 slows the whole client down.

    Why shared: a rate limit is per API key, not per run. With per-call back-off, hundreds of
    runs each retry on their own schedule and keep the limit hit; here the first 429 sets a
    "not before" time that every new call waits for, and each further 429 while it holds
    doubles the pause (up to ``MAX_PAUSE_S``); a successful call resets the step.
    """

    MAX_PAUSE_S = 10.0

    def __init__(self, base_delay: float = 0.5) -> None:
        self.base_delay = base_delay
        self.until = 0.0
        self.step = 0
        self.rate_limited = 0  # 429s seen (metrics and the scale bench)

    async def gate(self) -> None:
        loop = asyncio.get_running_loop()
        while (left := self.until - loop.time()) > 0:
            await asyncio.sleep(left * random.uniform(1.0, 1.2))  # spread the restart a little

    def hit(self, retry_after: float | None) -> float:
        """A 429: pause everyone; returns the pause."""
        self.rate_limited += 1
        now = asyncio.get_running_loop().time()
        if self.until <= now:  # a new episode; within one, later 429s only extend it
            self.step = min(self.step + 1, 8)
        pause = min(self.base_delay * 2 ** (self.step - 1), self.MAX_PAUSE_S)
        if retry_after is not None:
            pause = max(pause, min(retry_after, 30.0))
        self.until = max(self.until, now + pause)
        return pause

    def ok(self) -> None:
        if self.step and self.until <= asyncio.get_running_loop().time():
            self.step = 0


class Reaper:
    """Deletes, again and again, what could not be deleted when its run ended.

    Why: under load (an overloaded or rate-limiting API) a delete can fail even after its
    retries, and a sandbox left behind keeps costing money until its auto-stop/delete. Each
    failure is handed here; one task per executor retries with a growing pause (2 s → 60 s)
    until Daytona confirms, and ``close`` makes a last attempt. Sandboxes whose id never became
    known (a failed create) are found again by their unique label.
    """

    def __init__(self, delete: Callable[[AsyncSandbox], Awaitable[None]],
                 delete_labelled: Callable[[dict[str, str]], Awaitable[bool]]) -> None:
        self._delete, self._delete_labelled = delete, delete_labelled
        self.sandboxes: dict[str, AsyncSandbox] = {}
        self.labels: list[dict[str, str]] = []
        self._task: asyncio.Task[None] | None = None

    def sandbox(self, sb: AsyncSandbox) -> None:
        self.sandboxes[sb.id] = sb
        self._wake()

    def labelled(self, labels: dict[str, str]) -> None:
        self.labels.append(labels)
        self._wake()

    def _wake(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self, first_pause: float = 2.0) -> None:
        pause = first_pause
        while self.sandboxes or self.labels:
            await asyncio.sleep(pause)
            await self.sweep()
            pause = min(pause * 2, 60.0)

    async def sweep(self) -> None:
        """One attempt at everything pending."""
        for sandbox_id, sb in list(self.sandboxes.items()):
            try:
                await self._delete(sb)
                self.sandboxes.pop(sandbox_id, None)
            except ExecutionError as exc:
                log.warning("Daytona sandbox %s still not deleted (will retry): %s", sandbox_id, exc)
        for labels in list(self.labels):
            if await self._delete_labelled(labels):
                self.labels.remove(labels)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.sweep()
        for sandbox_id in self.sandboxes:
            log.error("Daytona sandbox %s could not be deleted; `agent-manager sandboxes gc` removes it", sandbox_id)


def _retry_after(exc: BaseException) -> float | None:
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        value = (getattr(exc, "headers", None) or {}).get("Retry-After")
        return float(value) if value is not None else None
    return None


async def retrying(what: str, call: Callable[[], Awaitable[T]], timeout: float, *, attempts: int = 5,
                   base_delay: float = 0.5, idempotent: bool = True, backoff: Backoff | None = None) -> T:
    """One SDK call with our own deadline, retrying 429/5xx; raises ExecutionError (cause: SDK error).

    With ``backoff``, 429s pause every call sharing it and do not use up ``attempts`` (a rate
    limit is not a failure of this call, only a reason to wait); 5xx still do.
    """
    sdk = load_sdk()
    attempt = limited = 0
    while True:
        if backoff is not None:
            await backoff.gate()
        attempt += 1
        try:
            async with asyncio.timeout(timeout + CLIENT_SLACK_S):  # not wait_for: no task per call (3.11)
                result = await call()
        except TimeoutError as exc:
            raise ExecutionError(f"Daytona {what}: no answer within {timeout + CLIENT_SLACK_S:.0f}s") from exc
        except sdk.DaytonaError as exc:
            if backoff is not None and status_of(exc) == 429 and limited < MAX_RATE_LIMITED:
                limited += 1
                attempt -= 1
                pause = backoff.hit(_retry_after(exc))
                log.info("Daytona %s: rate limited; every call pauses %.2fs", what, pause)
                continue
            if attempt >= attempts or not _retryable(exc, idempotent):
                raise ExecutionError(f"Daytona {what} failed: {exc}", {"status": status_of(exc)}) from exc
            delay = min(base_delay * 2 ** (attempt - 1), 10.0) * random.uniform(0.5, 1.0)
            delay = max(delay, min(_retry_after(exc) or 0.0, 30.0))
            log.info("Daytona %s: %s; retry %d/%d in %.2fs", what, exc, attempt, attempts - 1, delay)
            await asyncio.sleep(delay)
            continue
        if backoff is not None:
            backoff.ok()
        return result


def make_client(config: DaytonaSettings) -> AsyncDaytona:
    """A client configured from the ``[daytona]`` section alone (key, URL and target passed
    explicitly: the SDK never reads the environment on its own)."""
    sdk = load_sdk()
    if not config.configured or config.api_key is None:
        raise ExecutorUnavailable(NO_KEY)
    # No connection cap: every running command holds one log WebSocket on the shared aiohttp
    # session, so the SDK's default cap (250) would make run 251 wait for run 1 to end before
    # it could even create its sandbox. Concurrency is bounded by our own limits instead.
    return sdk.AsyncDaytona(sdk.DaytonaConfig(
        api_key=config.api_key.get_secret_value(),
        api_url=config.api_url or DEFAULT_API_URL, target=config.target,
        connection_pool_maxsize=None))


async def list_labelled(client: AsyncDaytona, labels: dict[str, str], attempts: int = 5,
                backoff: Backoff | None = None) -> list[AsyncSandbox]:
    """All sandboxes whose labels include ``labels`` (every page)."""
    query = load_sdk().ListSandboxesQuery(labels=labels)

    async def collect() -> list[AsyncSandbox]:
        return [sb async for sb in client.list(query, request_timeout=REQUEST_TIMEOUT_S)]
    return await retrying("list sandboxes", collect, REQUEST_TIMEOUT_S * 4, attempts=attempts, backoff=backoff)


async def delete_sandbox(sb: AsyncSandbox, attempts: int = 5, base_delay: float = 0.5,
                  backoff: Backoff | None = None) -> None:
    """Delete, treating "already gone" as success."""
    try:
        await retrying(f"delete sandbox {sb.id}", lambda: sb.delete(timeout=DELETE_TIMEOUT_S),
                       DELETE_TIMEOUT_S, attempts=attempts, base_delay=base_delay, backoff=backoff)
    except ExecutionError as exc:
        if not isinstance(exc.__cause__, load_sdk().DaytonaNotFoundError):
            raise


def sandbox_state(sb: Any) -> str:
    return str(getattr(sb.state, "value", sb.state))


async def list_sandboxes(config: DaytonaSettings) -> list[dict[str, Any]]:
    """Every sandbox labelled ``agent-manager`` (any instance): ``agent-manager sandboxes list``."""
    async with make_client(config) as client:
        return [{"id": sb.id, "name": sb.name, "state": sandbox_state(sb), "instance": sb.labels.get(LABEL),
                 "run": sb.labels.get(RUN_LABEL), "pool": POOL_LABEL in sb.labels, "labels": dict(sb.labels),
                 "created_at": sb.created_at, "cpu": sb.cpu, "memory": sb.memory, "disk": sb.disk}
                for sb in await list_labelled(client, {}, attempts=2) if LABEL in sb.labels]


async def sweep(config: DaytonaSettings, keep: Collection[str] | Callable[[], Collection[str]] = frozenset(),
                instance: str | None = None, spare: Collection[str] = frozenset()) -> int:
    """Delete leftover ``agent-manager`` sandboxes not in ``keep`` (only ``instance``'s if given),
    sparing those whose run or pool label is in ``spare``; unlabelled sandboxes are never
    touched. Returns how many were deleted. ``keep`` (or what it returns) and ``spare`` are read
    once the list has arrived, not when the sweep starts: a sandbox created meanwhile by a run
    or terminal of this service is in the list, and its label or id is known by then."""
    deleted = 0
    async with make_client(config) as client:
        listed = await list_labelled(client, {})
        kept = set(keep() if callable(keep) else keep)
        for sb in listed:
            if LABEL not in sb.labels or sb.id in kept or instance not in (None, sb.labels[LABEL]):
                continue
            if spare and (sb.labels.get(RUN_LABEL) in spare or sb.labels.get(POOL_LABEL) in spare):
                continue
            try:
                await delete_sandbox(sb)
                deleted += 1
            except ExecutionError as exc:
                log.warning("could not delete leftover sandbox %s: %s", sb.id, exc)
    return deleted

