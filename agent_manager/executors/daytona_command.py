"""One agent command in one Daytona sandbox: start it, stream its logs, fetch outputs, clean up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import shlex
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from agent_manager.errors import ExecutionError
from agent_manager.executors.base import Chunk, ExecSpec, PortableRepo
from agent_manager.executors.daytona_api import (
    ENV_NAME,
    MAX_RATE_LIMITED,
    MAX_UPLOAD_BYTES,
    NOT_FOUND_MARK,
    REQUEST_TIMEOUT_S,
    STDIN_NAME,
    STREAM_ATTEMPTS,
    TRANSFER_TIMEOUT_S,
    load_sdk,
    status_of,
)
from agent_manager.models import Stream

if TYPE_CHECKING:
    from daytona import AsyncSandbox

    from agent_manager.executors.daytona_api import Backoff, Reaper
    from agent_manager.executors.daytona_loop import Outlet
    from agent_manager.settings import Settings

log = logging.getLogger("agent_manager.executors.daytona")
# Output chunks a run may have waiting between the log stream and the run layer (daytona_loop.Handoff).
OUTPUT_QUEUE_CHUNKS = 256
R = TypeVar("R")


class SandboxOwner(Protocol):
    """What a command (or a terminal, ``daytona_pty``) in a sandbox needs from the executor that
    made it: its settings, its retrying calls and shared back-off, deleting (with the reaper as
    the fallback) and the set of running commands. Declared here, implemented by
    ``daytona.DaytonaExecutor``, so imports go one way: daytona → daytona_command → daytona_api."""

    settings: Settings
    backoff: Backoff
    base_delay: float
    reaper: Reaper
    running: set[DaytonaExecution]

    async def call(self, what: str, call: Callable[[], Awaitable[R]], timeout: float = ...,
                   idempotent: bool = True) -> R: ...

    async def delete(self, sb: AsyncSandbox) -> None: ...

class ExitSink(Protocol):
    """Where a command's exit code (or error) goes: a ``concurrent.futures.Future`` read by the
    service's loop (thread mode), or the worker's lighter ``ExitSlot``. A second report raises
    ``concurrent.futures.InvalidStateError`` (``DaytonaExecution._report`` expects that)."""

    def set_result(self, result: int, /) -> None: ...

    def set_exception(self, exception: BaseException | None, /) -> None: ...

class ExitSlot:
    """A run's exit code or error in the worker process (an ``ExitSink``), handed to
    ``on_exit`` once. Not a ``concurrent.futures.Future``: that carries a lock, a condition and
    a deque for readers on other threads (about 1 KB a run, 2 MB at 2,000 runs), and everything
    here happens on the worker's one loop thread."""

    __slots__ = ("_on_exit", "code", "error", "_set")

    def __init__(self, on_exit: Callable[[ExitSlot], None]) -> None:
        self._on_exit: Callable[[ExitSlot], None] | None = on_exit
        self.code: int | None = None
        self.error: BaseException | None = None
        self._set = False

    def done(self) -> bool:
        return self._set

    def set_result(self, result: int, /) -> None:
        self._settle(result, None)

    def set_exception(self, exception: BaseException | None, /) -> None:
        self._settle(None, exception or ExecutionError("the run failed"))

    def _settle(self, code: int | None, error: BaseException | None) -> None:
        if self._set:
            raise concurrent.futures.InvalidStateError("the exit of this run is already known")
        self._set, self.code, self.error = True, code, error
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:
            on_exit(self)


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


def build_command(argv: list[str], cwd: str, stdin_file: str | None, sentinel: str) -> str:
    """The session command string: every element quoted, so the prompt stays one argument."""
    return shlex.join(["sh", "-c", PROLOGUE, "agent-manager", sentinel, cwd, stdin_file or "", *argv])


def env_payload(env: dict[str, str], sentinel: str) -> str:
    """What the command reads from stdin before the agent starts: ``export`` lines, then the sentinel."""
    for name in env:
        if not ENV_NAME.fullmatch(name):
            raise ExecutionError(f"invalid environment variable name: {name!r}")
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()) + sentinel + "\n"


class DaytonaExecution:
    """One command in one sandbox, on the Daytona loop; the sandbox is deleted when the command
    is over. The service's loop sees it through ``daytona.DaytonaRun``: output through ``outlet``
    (bounded: a reader slower than the log stream pauses the follower), the exit code (or the
    error) through ``exit_code``."""

    def __init__(self, executor: SandboxOwner, sandbox: AsyncSandbox, spec: ExecSpec, run_id: str,
                 outlet: Outlet[Chunk], exit_code: ExitSink) -> None:
        self.info: dict[str, str] = {"sandbox_id": sandbox.id}
        self._ex, self._sb, self._spec = executor, sandbox, spec
        self._session, self._cmd_id, self._remote_ws = f"agent-manager-{run_id}", "", ""
        self._outlet, self._exit = outlet, exit_code
        self._delivered: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self._stderr_tail = ""
        self._task: asyncio.Task[int] | None = None
        self._releasing: asyncio.Future[None] | None = None  # a cancel's delete, if it outlives the cancel
        self._cancelled = self._released = self._collected = False
        self._hold = asyncio.Lock()
        self._carry = ""

    async def launch(self) -> None:
        """Upload inputs, start the command, hand it its environment, start following it."""
        ex, sb, spec, sdk = self._ex, self._sb, self._spec, load_sdk()
        work_dir = PurePosixPath(await ex.call("get work dir", sb.get_work_dir))
        self._remote_ws = str(work_dir / "workspace")
        self._carry = str(work_dir / ".agent-manager")
        if spec.portable is not None:
            await self._setup_repo(spec.portable)
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
        try:
            response = await ex.call("start command", lambda: sb.process.execute_session_command(
                self._session, request, timeout=int(REQUEST_TIMEOUT_S)), idempotent=False)
            self._cmd_id = response.cmd_id
        except ExecutionError:
            self._cmd_id = await self._started_anyway()
            if not self._cmd_id:
                raise
        payload = env_payload(spec.env, sentinel)
        await ex.call("send environment", lambda: sb.process.send_session_command_input(
            self._session, self._cmd_id, payload, request_timeout=REQUEST_TIMEOUT_S), idempotent=False)
        self._task = asyncio.create_task(self._follow())
        self._task.add_done_callback(self._report)

    def _report(self, task: asyncio.Task[int]) -> None:
        """The follower's end, for the service's loop (``wait``): -SIGKILL when cancel() gave up on it."""
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if task.cancelled():
                self._exit.set_result(-signal.SIGKILL)
            elif (exc := task.exception()) is not None:
                self._exit.set_exception(exc)
            else:
                self._exit.set_result(task.result())

    async def _started_anyway(self) -> str:
        """The start failed without an answer (a timeout or gateway error under load), but it may
        have gone through: this run's own session then holds exactly that one command, which is
        adopted. Never started again blindly: a repeat could run the agent twice. "" if not."""
        sb = self._sb
        try:
            session = await self._ex.call("look for the started command", lambda: sb.process.get_session(
                self._session, request_timeout=REQUEST_TIMEOUT_S))
        except ExecutionError:
            return ""
        commands = list(getattr(session, "commands", None) or [])
        if len(commands) != 1 or not getattr(commands[0], "id", None):
            return ""
        log.warning("Daytona start command of %s got no answer, but the command runs: adopted", self._session)
        return str(commands[0].id)

    def _uploads(self, sdk: Any) -> list[Any]:
        spec = self._spec
        files: dict[str, Path | bytes] = {}
        if spec.workspace is not None and spec.workspace.is_dir() and spec.portable is None:
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

    async def _setup_repo(self, repo: PortableRepo) -> None:
        await setup_repo(self._ex, self._sb, repo, self._carry, self._remote_ws)

    async def _collect_changes(self) -> None:
        """Everything the agent changed, as a binary patch, to ``portable.changes`` on this host."""
        async with self._hold:  # release() waits: the sandbox must outlive the download
            await self._collect_locked()

    async def _collect_locked(self) -> None:
        repo = self._spec.portable
        if repo is None or self._collected or self._released:
            return
        self._collected = True
        await collect_changes(self._ex, self._sb, repo, self._carry, self._remote_ws)

    def _remote_cwd(self) -> str:
        """Relative, or inside the host workspace: mapped into the remote one; else used as is."""
        cwd, ws = Path(self._spec.cwd or "."), self._spec.workspace
        if ws is not None and cwd.is_absolute() and cwd.is_relative_to(ws):
            cwd = cwd.relative_to(ws)
        return str(cwd) if cwd.is_absolute() else str(PurePosixPath(self._remote_ws) / cwd.as_posix())

    async def _follow(self) -> int:
        """Stream to the end, read the exit code, fetch outputs; always delete the sandbox."""
        try:
            async with asyncio.timeout(self._spec.timeout_s + 60):  # no extra task per run (thousands at once)
                await self._stream()
            if self._cancelled:
                return -signal.SIGKILL
            code = await self._exit_code()
            if code == 127 and NOT_FOUND_MARK in self._stderr_tail:
                missing = self._stderr_tail.split(NOT_FOUND_MARK, 1)[1].splitlines()[0]
                raise ExecutionError(f"{missing}: executable not found in the Daytona sandbox")
            await self._collect_changes()
            await self._fetch_outputs()
            return code
        except Exception as exc:
            if self._cancelled:  # the sandbox is gone: whatever failed after cancel() is expected
                return -signal.SIGKILL
            if isinstance(exc, TimeoutError):
                raise ExecutionError(f"Daytona command {self._cmd_id} outlived its timeout") from exc
            raise
        finally:
            self._outlet.end()
            await asyncio.shield(self.release())

    async def _emit(self, stream: Stream, text: str) -> None:
        if stream == "stderr":
            self._stderr_tail = (self._stderr_tail + text)[-4096:]
        self._delivered[stream] += len(text)
        await self._outlet.put(Chunk(stream, text))

    async def _stream(self) -> None:
        """Live logs; reopen a dropped stream (skipping what was delivered), else use the snapshot."""
        sdk, proc = load_sdk(), self._sb.process
        attempt = limited = 0
        while attempt < STREAM_ATTEMPTS:
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
                if status_of(exc) == 429 and limited < MAX_RATE_LIMITED:  # not a drop: wait with everyone
                    limited += 1
                    self._ex.backoff.hit(None)
                    await self._ex.backoff.gate()
                    continue
                log.warning("log stream of %s dropped (%s), attempt %d", self._sb.id, exc, attempt + 1)
                await asyncio.sleep(self._ex.base_delay * 2 ** attempt)
                attempt += 1
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
        spec, sdk = self._spec, load_sdk()
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
        """Delete the sandbox once; a failure goes to the executor's reaper (auto-stop/delete and
        ``gc`` remain the backstop)."""
        if self._released:  # another caller is deleting it (maybe in the background, after a cancel)
            return
        async with self._hold:
            if self._released:
                return
            self._released = True
            self._ex.running.discard(self)
            try:
                await self._ex.delete(self._sb)
            except ExecutionError as exc:
                log.error("could not delete Daytona sandbox %s (retrying in the background): %s", self._sb.id, exc)
                self._ex.reaper.sandbox(self._sb)

    async def cancel(self) -> None:
        """Delete the sandbox (which kills everything in it); the follower then ends with -SIGKILL.
        A workspace's changes are collected first (the agent's session is ended before that)."""
        self._cancelled = True
        if self._spec.portable is not None and self._cmd_id and not self._released:
            async with self._hold:  # taken before anything yields: the follower cannot delete first
                try:
                    await asyncio.wait_for(self._sb.process.delete_session(self._session), REQUEST_TIMEOUT_S)
                    await asyncio.wait_for(self._collect_locked(), TRANSFER_TIMEOUT_S)
                except Exception as exc:  # the sandbox may be unreachable: what it held is then lost
                    log.warning("could not collect the changes of cancelled sandbox %s: %s", self._sb.id, exc)
        # Bounded: an API that stops answering held the caller (a user's cancel, a run's
        # timeout) for the SDK's 60 s delete timeout. The delete goes on in the background,
        # and a failed one goes to the reaper (``release``).
        self._releasing = asyncio.ensure_future(self.release())
        try:
            await asyncio.wait_for(asyncio.shield(self._releasing), self._ex.settings.kill_grace_s + 5)
        except TimeoutError:
            log.warning("deleting cancelled Daytona sandbox %s goes on in the background", self._sb.id)
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self._ex.settings.kill_grace_s + 5)
            except Exception:  # the follower's own error is wait()'s business; here we only end it
                self._task.cancel()


async def run_script(ex: SandboxOwner, sb: AsyncSandbox, what: str, script: str, *args: str) -> None:
    """One short ``sh -c`` command (not streamed); a non-zero exit is an ExecutionError."""
    command = shlex.join(["sh", "-c", script, "agent-manager", *args])
    result = await ex.call(what, lambda: sb.process.exec(command, timeout=TRANSFER_TIMEOUT_S),
                           TRANSFER_TIMEOUT_S + 30, idempotent=False)
    if result.exit_code != 0:
        raise ExecutionError(f"{what} failed in the Daytona sandbox: {(result.result or '').strip()[-500:]}")


async def setup_repo(ex: SandboxOwner, sb: AsyncSandbox, repo: PortableRepo, carry: str, remote_ws: str) -> None:
    """The workspace as a git repository in ``remote_ws``: upload the bundle to ``carry``, clone
    it (workspaces.portable). Used by runs and by terminals (executors.daytona_pty)."""
    bundle = f"{carry}/base.bundle"
    await ex.call("upload bundle", lambda: sb.fs.upload_file(str(repo.bundle), bundle, timeout=TRANSFER_TIMEOUT_S),
                  TRANSFER_TIMEOUT_S)
    await run_script(ex, sb, "workspace set-up", repo.setup, bundle, remote_ws, f"{carry}/state", *repo.args)


async def collect_changes(ex: SandboxOwner, sb: AsyncSandbox, repo: PortableRepo, carry: str,
                          remote_ws: str) -> None:
    """Everything changed in ``remote_ws`` since ``setup_repo`` (committed or not), as a binary
    patch, downloaded to ``repo.changes`` on this host — before the sandbox is deleted."""
    out = f"{carry}/changes.patch"
    await run_script(ex, sb, "collecting changes", repo.collect, f"{carry}/base.bundle", remote_ws,
                     f"{carry}/state", out, *repo.args)
    repo.changes.parent.mkdir(parents=True, exist_ok=True)
    await ex.call("download changes", lambda: sb.fs.download_file(out, str(repo.changes), TRANSFER_TIMEOUT_S),
                  TRANSFER_TIMEOUT_S)


def _safe_rel(rel: str) -> str:
    """A workspace-relative POSIX path that cannot climb out of the workspace."""
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ExecutionError(f"path must be relative to the workspace: {rel!r}")
    return path.as_posix()
