"""Daytona backend: each run gets its own cloud sandbox, driven by the official async SDK.

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
import random
import re
import shlex
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import Availability, Chunk, ExecSpec, Stream
from agent_manager.settings import Settings

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox

log = logging.getLogger(__name__)
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

# Run as `sh -c PROLOGUE agent-manager SENTINEL CWD STDIN_FILE ARGV...`: read the environment from
# stdin up to the sentinel, enter the working directory, exec the agent with its own stdin.
PROLOGUE = """__am_s=$1 __am_d=$2 __am_i=${3:-/dev/null}; shift 3
__am_e=
while IFS= read -r __am_l; do [ "$__am_l" = "$__am_s" ] && break; __am_e="$__am_e$__am_l
"; done
eval "$__am_e"; unset __am_e __am_l __am_s
mkdir -p "$__am_d" && cd "$__am_d" || exit 126
command -v "$1" >/dev/null 2>&1 || { printf '%s%s\\n' '""" + NOT_FOUND_MARK + """' "$1" >&2; exit 127; }
exec "$@" <"$__am_i"
"""


def _sdk() -> Any:
    """The ``daytona`` module, imported on first use so the package works without the extra."""
    try:
        import daytona
    except ImportError as exc:
        raise ExecutorUnavailable(INSTALL_HINT) from exc
    return daytona


def build_command(argv: list[str], cwd: str, stdin_file: str | None, sentinel: str) -> str:
    """The session command string: every element quoted, so the prompt stays one argument."""
    return shlex.join(["sh", "-c", PROLOGUE, "agent-manager", sentinel, cwd, stdin_file or "", *argv])


def env_payload(env: dict[str, str], sentinel: str) -> str:
    """What the command reads from stdin before the agent starts: ``export`` lines, then the sentinel."""
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ExecutionError(f"invalid environment variable name: {name!r}")
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()) + sentinel + "\n"


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
                for sb in await _list(client, {}) if LABEL in sb.labels]


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


class DaytonaExecutor:
    """One sandbox per run; optionally a warm pool of ready sandboxes per sandbox shape.

    Metrics hooks: ``create_latencies`` (seconds per successful create, pool refills included)
    and ``live`` (sandboxes currently running a command for this executor).
    """

    name = "daytona"

    def __init__(self, settings: Settings, instance_id: str, *, retry_attempts: int = 5,
                 retry_base_s: float = 0.5) -> None:
        self.settings, self.instance_id = settings, instance_id
        self.create_latencies: list[float] = []
        self.live = 0
        self.attempts, self.base_delay = retry_attempts, retry_base_s
        self._client_obj: AsyncDaytona | None = None
        self._pool: dict[Profile, list[AsyncSandbox]] = {}
        self._refills: dict[Profile, asyncio.Task[None]] = {}
        self.running: set[DaytonaExecution] = set()
        self._closed = False
        self._available_until = 0.0

    async def call(self, what: str, call: Callable[[], Awaitable[T]], timeout: float = REQUEST_TIMEOUT_S,
                   idempotent: bool = True) -> T:
        return await retrying(what, call, timeout, attempts=self.attempts, base_delay=self.base_delay,
                              idempotent=idempotent)

    async def delete(self, sb: AsyncSandbox) -> None:
        await _delete(sb, self.attempts, self.base_delay)

    def client(self) -> AsyncDaytona:
        if self._client_obj is None:
            self._client_obj = _client(self.settings)
        return self._client_obj

    def keep_ids(self) -> set[str]:
        """Sandboxes this executor is using right now (running or pooled): never swept."""
        return {run.info["sandbox_id"] for run in self.running} | {
            sb.id for pool in self._pool.values() for sb in pool}

    async def available(self) -> Availability:
        """Cached for ``AVAILABILITY_TTL_S`` when good, so routing does not list sandboxes per run."""
        now = asyncio.get_running_loop().time()
        if self._available_until > now:
            return Availability(True)
        result = await self._check_available()
        if result.ok:
            self._available_until = now + AVAILABILITY_TTL_S
        return result

    async def _check_available(self) -> Availability:
        try:
            sdk = _sdk()
            client = self.client()
        except ExecutorUnavailable as exc:
            return Availability(False, exc.message)
        try:
            await asyncio.wait_for(_list(client, {LABEL: self.instance_id}, attempts=1), 15)
        except ExecutionError as exc:
            if isinstance(exc.__cause__, sdk.DaytonaAuthenticationError | sdk.DaytonaForbiddenError):
                return Availability(False, f"Daytona rejected the API key: {exc.__cause__}")
            return Availability(False, f"Daytona API unreachable: {exc.__cause__ or exc}")
        except (sdk.DaytonaAuthenticationError, sdk.DaytonaForbiddenError) as exc:
            return Availability(False, f"Daytona rejected the API key: {exc}")
        except Exception as exc:  # whatever it is, the user is told the backend cannot be used now
            return Availability(False, f"Daytona API unreachable: {exc or type(exc).__name__}")
        return Availability(True)

    def _profile(self, spec: ExecSpec) -> Profile:
        """Sandboxes are interchangeable only with the same network and size."""
        res = spec.resources
        sized = bool(self.settings.daytona_image) and any(
            v is not None for v in (res.cpu, res.memory_mb, res.disk_gb))
        return (spec.network, res.cpu, res.memory_mb, res.disk_gb) if sized else (spec.network,)

    def _params(self, profile: Profile, labels: dict[str, str]) -> Any:
        sdk, s = _sdk(), self.settings
        common: dict[str, Any] = {
            "labels": labels, "auto_stop_interval": s.daytona_auto_stop_minutes,
            "auto_delete_interval": s.daytona_auto_delete_minutes, "network_block_all": not profile[0]}
        if not s.daytona_image:  # a snapshot fixes its own size: resources only work with an image
            return sdk.CreateSandboxFromSnapshotParams(snapshot=s.daytona_snapshot, **common)
        resources = None
        if len(profile) > 1:
            _, cpu, memory_mb, disk_gb = profile
            resources = sdk.Resources(cpu=math.ceil(cpu) if cpu else None, disk=disk_gb,
                                      memory=math.ceil(memory_mb / 1024) if memory_mb else None)
        return sdk.CreateSandboxFromImageParams(image=s.daytona_image, resources=resources, **common)

    async def _create(self, profile: Profile, labels: dict[str, str]) -> AsyncSandbox:
        """Create and wait for ``started``; on any failure delete whatever carries our unique label."""
        unique = {k: v for k, v in labels.items() if k in (RUN_LABEL, POOL_LABEL)}
        timeout = self.settings.daytona_create_timeout_s
        params = self._params(profile, labels)
        started = time.monotonic()
        try:
            sb: AsyncSandbox = await self.call(
                "create sandbox", lambda: self.client().create(params, timeout=timeout), timeout)
        except BaseException as exc:
            await asyncio.shield(self._delete_labelled(unique))
            if isinstance(exc, ExecutionError) and isinstance(exc.__cause__, _sdk().DaytonaTimeoutError):
                raise ExecutionError(f"Daytona sandbox did not start within {timeout:.0f}s: {exc}") from exc
            raise
        self.create_latencies.append(time.monotonic() - started)
        return sb

    async def _delete_labelled(self, labels: dict[str, str], pool_only: bool = False) -> None:
        """Delete sandboxes found by label: strays of failed creates, or unfinished pool ones."""
        try:
            for sb in await _list(self.client(), labels, self.attempts):
                if not pool_only or POOL_LABEL in sb.labels:
                    await self.delete(sb)
        except ExecutionError as exc:
            log.error("could not clean up Daytona sandboxes labelled %s: %s", labels, exc)

    async def warm(self, network: bool = True) -> None:
        """Fill the pool for the default shape and wait for it (otherwise filled at first use)."""
        await self._ensure_refill(self._profile(ExecSpec(argv=["true"], network=network)), wait=True)

    async def _ensure_refill(self, profile: Profile, wait: bool = False) -> None:
        if self.settings.daytona_warm_pool <= 0 or self._closed:
            return
        task = self._refills.get(profile)
        if task is None or task.done():
            task = self._refills[profile] = asyncio.create_task(self._refill(profile))
        if wait:
            await asyncio.shield(task)

    async def _refill(self, profile: Profile) -> None:
        pool = self._pool.setdefault(profile, [])
        need = self.settings.daytona_warm_pool - len(pool)
        labels = [{LABEL: self.instance_id, POOL_LABEL: uuid.uuid4().hex} for _ in range(need)]
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
        pool, timeout = self._pool.get(profile, []), self.settings.daytona_create_timeout_s
        sandbox = None
        while pool and sandbox is None:
            candidate = pool.pop(0)
            try:
                await self.call("refresh sandbox", lambda c=candidate: c.refresh_data(  # type: ignore[misc]
                    request_timeout=REQUEST_TIMEOUT_S))
                if _state(candidate) != "started":
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

    async def start(self, spec: ExecSpec) -> DaytonaExecution:
        if not spec.argv:
            raise ExecutionError("nothing to run: empty argv")
        if self._closed:
            raise ExecutorUnavailable("the Daytona executor is closed")
        self.client()  # ExecutorUnavailable early: extra missing or no key
        run_id = uuid.uuid4().hex
        labels = {**spec.labels, LABEL: self.instance_id, RUN_LABEL: run_id}  # ours cannot be overridden
        profile = self._profile(spec)
        sandbox = await self._take(profile, labels)
        pooled = sandbox is not None
        if sandbox is None:
            sandbox = await self._create(profile, labels)
        execution = DaytonaExecution(self, sandbox, spec, run_id)
        execution.info["pool"] = "hit" if pooled else "miss"
        self.live += 1
        self.running.add(execution)
        try:
            await execution.launch()
        except BaseException:
            await asyncio.shield(execution.release())
            raise
        return execution

    async def close(self) -> None:
        """Stop refills, cancel running executions, delete pooled sandboxes, close the client."""
        self._closed = True
        for task in self._refills.values():
            task.cancel()
        await asyncio.gather(*self._refills.values(), return_exceptions=True)
        await asyncio.gather(*(run.cancel() for run in list(self.running)), return_exceptions=True)
        for sb in [sb for pool in self._pool.values() for sb in pool]:
            with contextlib.suppress(ExecutionError):
                await self.delete(sb)
        self._pool.clear()
        if self._client_obj is not None:
            if self._refills:  # a create cancelled mid-flight left no id behind: find it by label
                await self._delete_labelled({LABEL: self.instance_id}, pool_only=True)
            await self._client_obj.close()
            self._client_obj = None


class DaytonaExecution:
    """One command in one sandbox; the sandbox is deleted when the command is over."""

    def __init__(self, executor: DaytonaExecutor, sandbox: AsyncSandbox, spec: ExecSpec, run_id: str) -> None:
        self.info: dict[str, str] = {"sandbox_id": sandbox.id}
        self._ex, self._sb, self._spec = executor, sandbox, spec
        self._session, self._cmd_id, self._remote_ws = f"agent-manager-{run_id}", "", ""
        self._queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self._delivered: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self._stderr_tail = ""
        self._task: asyncio.Task[int] | None = None
        self._cancelled = self._released = False

    async def launch(self) -> None:
        """Upload inputs, start the command, hand it its environment, start following it."""
        ex, sb, spec, sdk = self._ex, self._sb, self._spec, _sdk()
        self._remote_ws = str(PurePosixPath(await ex.call("get work dir", sb.get_work_dir)) / "workspace")
        uploads = self._uploads(sdk)
        if uploads:
            await ex.call("upload files", lambda: sb.fs.upload_files(uploads, timeout=TRANSFER_TIMEOUT_S),
                          TRANSFER_TIMEOUT_S)
        await ex.call("create session", lambda: sb.process.create_session(
            self._session, request_timeout=REQUEST_TIMEOUT_S))
        sentinel = f"agent-manager-env-end-{uuid.uuid4().hex}"
        stdin_file = f"{self._remote_ws}/{STDIN_NAME}" if spec.stdin is not None else None
        command = build_command(spec.argv, self._remote_cwd(), stdin_file, sentinel)
        request = sdk.SessionExecuteRequest(command=command, run_async=True, suppress_input_echo=True)
        response = await ex.call("start command", lambda: sb.process.execute_session_command(
            self._session, request, timeout=int(REQUEST_TIMEOUT_S)), idempotent=False)
        self._cmd_id = response.cmd_id
        payload = env_payload(spec.env, sentinel)
        await ex.call("send environment", lambda: sb.process.send_session_command_input(
            self._session, self._cmd_id, payload, request_timeout=REQUEST_TIMEOUT_S), idempotent=False)
        self._task = asyncio.create_task(self._follow())

    def _uploads(self, sdk: Any) -> list[Any]:
        spec = self._spec
        files: dict[str, Path | bytes] = {}
        if spec.workspace is not None and spec.workspace.is_dir():
            for path in sorted(spec.workspace.rglob("*")):
                if path.is_file() and not path.is_symlink():  # never follow links out of the workspace
                    files[path.relative_to(spec.workspace).as_posix()] = path
        files.update({_safe_rel(rel): data for rel, data in spec.files.items()})
        if spec.stdin is not None:
            files[STDIN_NAME] = spec.stdin
        total = sum(len(src) if isinstance(src, bytes) else src.stat().st_size for src in files.values())
        if total > MAX_UPLOAD_BYTES:
            raise ExecutionError(f"workspace too large for Daytona ({total} bytes > {MAX_UPLOAD_BYTES})")
        return [sdk.FileUpload(source=src if isinstance(src, bytes) else str(src),
                               destination=f"{self._remote_ws}/{rel}") for rel, src in files.items()]

    def _remote_cwd(self) -> str:
        """Relative, or inside the host workspace: mapped into the remote one; else used as is."""
        cwd, ws = Path(self._spec.cwd or "."), self._spec.workspace
        if ws is not None and cwd.is_absolute() and cwd.is_relative_to(ws):
            cwd = cwd.relative_to(ws)
        return str(cwd) if cwd.is_absolute() else str(PurePosixPath(self._remote_ws) / cwd.as_posix())

    async def _follow(self) -> int:
        """Stream to the end, read the exit code, fetch outputs; always delete the sandbox."""
        try:
            await asyncio.wait_for(self._stream(), self._spec.timeout_s + 60)
            if self._cancelled:
                return -signal.SIGKILL
            code = await self._exit_code()
            if code == 127 and NOT_FOUND_MARK in self._stderr_tail:
                missing = self._stderr_tail.split(NOT_FOUND_MARK, 1)[1].splitlines()[0]
                raise ExecutionError(f"{missing}: executable not found in the Daytona sandbox")
            await self._fetch_outputs()
            return code
        except Exception as exc:
            if self._cancelled:  # the sandbox is gone: whatever failed after cancel() is expected
                return -signal.SIGKILL
            if isinstance(exc, TimeoutError):
                raise ExecutionError(f"Daytona command {self._cmd_id} outlived its timeout") from exc
            raise
        finally:
            self._queue.put_nowait(None)
            await asyncio.shield(self.release())

    async def _emit(self, stream: Stream, text: str) -> None:
        if stream == "stderr":
            self._stderr_tail = (self._stderr_tail + text)[-4096:]
        self._delivered[stream] += len(text)
        await self._queue.put(Chunk(stream, text))

    async def _stream(self) -> None:
        """Live logs; reopen a dropped stream (skipping what was delivered), else use the snapshot."""
        sdk, proc = _sdk(), self._sb.process
        for attempt in range(STREAM_ATTEMPTS):
            seen: dict[Stream, int] = {"stdout": 0, "stderr": 0}

            def handler(stream: Stream, seen: dict[Stream, int] = seen) -> Callable[[str], Awaitable[None]]:
                async def on_text(text: str) -> None:
                    skip = self._delivered[stream] - seen[stream]
                    seen[stream] += len(text)
                    if skip < len(text):
                        await self._emit(stream, text[max(skip, 0):])
                return on_text
            try:
                await proc.get_session_command_logs_async(self._session, self._cmd_id,
                                                          handler("stdout"), handler("stderr"))
                return
            except sdk.DaytonaError as exc:
                if self._cancelled:
                    return
                log.warning("log stream of %s dropped (%s), attempt %d", self._sb.id, exc, attempt + 1)
                await asyncio.sleep(self._ex.base_delay * 2 ** attempt)
        await self._exit_code()
        logs = await self._ex.call("get logs", lambda: proc.get_session_command_logs(
            self._session, self._cmd_id, request_timeout=REQUEST_TIMEOUT_S))
        for stream, text in (("stdout", logs.stdout or ""), ("stderr", logs.stderr or "")):
            done = self._delivered[stream]  # type: ignore[index]
            if len(text) > done:
                await self._emit(stream, text[done:])  # type: ignore[arg-type]

    async def _exit_code(self) -> int:
        """The daemon ends the stream once the exit code exists; poll in case it lags."""
        while True:
            cmd = await self._ex.call("get command", lambda: self._sb.process.get_session_command(
                self._session, self._cmd_id, request_timeout=REQUEST_TIMEOUT_S))
            if cmd.exit_code is not None:
                return int(cmd.exit_code)
            await asyncio.sleep(0.2)

    async def _fetch_outputs(self) -> None:
        spec, sdk = self._spec, _sdk()
        if not spec.outputs or spec.workspace is None:
            return
        wanted = {f"{self._remote_ws}/{_safe_rel(rel)}": _safe_rel(rel) for rel in spec.outputs}
        requests = [sdk.FileDownloadRequest(source=src) for src in wanted]
        results = await self._ex.call("download outputs", lambda: self._sb.fs.download_files(
            requests, timeout=TRANSFER_TIMEOUT_S), TRANSFER_TIMEOUT_S)
        root, missing = spec.workspace.resolve(), []
        for result in results:
            rel = wanted[result.source]
            if result.error or not isinstance(result.result, bytes):
                missing.append(rel)
                continue
            target = (root / rel).resolve()
            if not target.is_relative_to(root):  # e.g. a symlink in the host workspace
                raise ExecutionError(f"output path escapes the workspace: {rel}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(result.result)
        if missing:
            self.info["missing_outputs"] = ",".join(missing)

    async def release(self) -> None:
        """Delete the sandbox once; a failure is logged (auto-stop/delete and ``gc`` are the backstop)."""
        if self._released:
            return
        self._released, self._ex.live = True, self._ex.live - 1
        self._ex.running.discard(self)
        try:
            await self._ex.delete(self._sb)
        except ExecutionError as exc:
            log.error("could not delete Daytona sandbox %s: %s", self._sb.id, exc)

    async def output(self) -> AsyncIterator[Chunk]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk
        self._queue.put_nowait(None)  # later readers end too

    async def wait(self) -> int:
        if self._task is None:
            raise ExecutionError("the Daytona command was never started")
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():  # cancel() gave up waiting for the follower
                return -signal.SIGKILL
            raise

    async def cancel(self) -> None:
        """Delete the sandbox (which kills everything in it); the follower then ends with -SIGKILL."""
        self._cancelled = True
        await asyncio.shield(self.release())
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self._ex.settings.kill_grace_s + 5)
            except Exception:  # the follower's own error is wait()'s business; here we only end it
                self._task.cancel()


def _safe_rel(rel: str) -> str:
    """A workspace-relative POSIX path that cannot climb out of the workspace."""
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ExecutionError(f"path must be relative to the workspace: {rel!r}")
    return path.as_posix()
