"""The Daytona API through the official SDK: client, retries with backoff, listing and deleting.

The SDK (an optional extra) is imported lazily, only by the ``daytona*`` executor modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.settings import Settings

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox

log = logging.getLogger("agent_manager.executors.daytona")
T = TypeVar("T")
Profile = tuple[Any, ...]

LABEL, RUN_LABEL, POOL_LABEL = "agent-manager", "agent-manager-run", "agent-manager-pool"
AVAILABILITY_TTL_S = 30.0
DEFAULT_API_URL = "https://app.daytona.io/api"
INSTALL_HINT = "the daytona extra is not installed: pip install 'agent-manager[daytona]'"
REQUEST_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 600
DELETE_TIMEOUT_S = 60.0
CLIENT_SLACK_S = 10.0  # our own deadline on top of the SDK's, in case a call never returns
STREAM_ATTEMPTS = 3
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
RETRY_STATUSES = frozenset({500, 502, 503, 504})
NOT_FOUND_MARK = "agent-manager: executable not found in the sandbox: "
STDIN_NAME = ".agent-manager-stdin"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

def _sdk() -> Any:
    """The ``daytona`` module, imported on first use so the package works without the extra."""
    try:
        import daytona
    except ImportError as exc:
        raise ExecutorUnavailable(INSTALL_HINT) from exc
    return daytona


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else getattr(exc.__cause__, "status", None)


def _retryable(exc: BaseException, idempotent: bool) -> bool:
    """429 was rejected before anything happened, so it is always safe to repeat."""
    return _status(exc) == 429 or idempotent and (
        _status(exc) in RETRY_STATUSES or isinstance(exc, _sdk().DaytonaConnectionError))


async def retrying(what: str, call: Callable[[], Awaitable[T]], timeout: float, *, attempts: int = 5,
                   base_delay: float = 0.5, idempotent: bool = True) -> T:
    """One SDK call with our own deadline, retrying 429/5xx; raises ExecutionError (cause: SDK error)."""
    sdk = _sdk()
    for attempt in range(1, attempts + 1):
        try:
            return await asyncio.wait_for(call(), timeout + CLIENT_SLACK_S)
        except TimeoutError as exc:
            raise ExecutionError(f"Daytona {what}: no answer within {timeout + CLIENT_SLACK_S:.0f}s") from exc
        except sdk.DaytonaError as exc:
            if attempt == attempts or not _retryable(exc, idempotent):
                raise ExecutionError(f"Daytona {what} failed: {exc}", {"status": _status(exc)}) from exc
            delay = min(base_delay * 2 ** (attempt - 1), 10.0) * random.uniform(0.5, 1.0)
            with contextlib.suppress(TypeError, ValueError):
                delay = max(delay, min(float((exc.headers or {}).get("Retry-After", 0)), 30.0))
            log.info("Daytona %s: %s; retry %d/%d in %.2fs", what, exc, attempt, attempts - 1, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _client(settings: Settings) -> AsyncDaytona:
    """A client configured from settings alone (key, URL and target passed explicitly)."""
    sdk = _sdk()
    if not settings.daytona_configured or settings.daytona_api_key is None:
        raise ExecutorUnavailable("DAYTONA_API_KEY is not set")
    return sdk.AsyncDaytona(sdk.DaytonaConfig(
        api_key=settings.daytona_api_key.get_secret_value(),
        api_url=settings.daytona_api_url or DEFAULT_API_URL, target=settings.daytona_target))


async def _list(client: AsyncDaytona, labels: dict[str, str], attempts: int = 5) -> list[AsyncSandbox]:
    """All sandboxes whose labels include ``labels`` (every page)."""
    query = _sdk().ListSandboxesQuery(labels=labels)

    async def collect() -> list[AsyncSandbox]:
        return [sb async for sb in client.list(query, request_timeout=REQUEST_TIMEOUT_S)]
    return await retrying("list sandboxes", collect, REQUEST_TIMEOUT_S * 4, attempts=attempts)


async def _delete(sb: AsyncSandbox, attempts: int = 5, base_delay: float = 0.5) -> None:
    """Delete, treating "already gone" as success."""
    try:
        await retrying(f"delete sandbox {sb.id}", lambda: sb.delete(timeout=DELETE_TIMEOUT_S),
                       DELETE_TIMEOUT_S, attempts=attempts, base_delay=base_delay)
    except ExecutionError as exc:
        if not isinstance(exc.__cause__, _sdk().DaytonaNotFoundError):
            raise


def _state(sb: Any) -> str:
    return str(getattr(sb.state, "value", sb.state))


async def list_sandboxes(settings: Settings) -> list[dict[str, Any]]:
    """Every sandbox labelled ``agent-manager`` (any instance): ``agent-manager sandboxes list``."""
    async with _client(settings) as client:
        return [{"id": sb.id, "name": sb.name, "state": _state(sb), "instance": sb.labels.get(LABEL),
                 "run": sb.labels.get(RUN_LABEL), "pool": POOL_LABEL in sb.labels, "labels": dict(sb.labels),
                 "created_at": sb.created_at, "cpu": sb.cpu, "memory": sb.memory, "disk": sb.disk}
                for sb in await _list(client, {}, attempts=2) if LABEL in sb.labels]


async def sweep(settings: Settings, keep: frozenset[str] | set[str] = frozenset(),
                instance: str | None = None) -> int:
    """Delete leftover ``agent-manager`` sandboxes not in ``keep`` (only ``instance``'s if given);
    unlabelled sandboxes are never touched. Returns how many were deleted."""
    deleted = 0
    async with _client(settings) as client:
        for sb in await _list(client, {}):
            if LABEL not in sb.labels or sb.id in keep or instance not in (None, sb.labels[LABEL]):
                continue
            try:
                await _delete(sb)
                deleted += 1
            except ExecutionError as exc:
                log.warning("could not delete leftover sandbox %s: %s", sb.id, exc)
    return deleted

