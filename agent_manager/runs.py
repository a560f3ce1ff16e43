"""The run lifecycle: queue → route → execute → persist events → finish.

Every event is committed to the run's log before anyone hears of it (``EventLog.append``),
so the log is the single source of truth for live viewers, reconnecting clients and the
history alike. Run logs are batched (committed by the event-writer thread), so the run's
final row update travels in the same transaction as its ``run.finished`` event, and a run
counts as done (``wait``) only once all its events are committed. The manager also owns the
limits that are about the service rather than a backend: how many host runs at once,
timeouts, stall detection and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_manager.agents import get_kind
from agent_manager.agents.base import AgentKind, Gateway, Invocation, PlainTextParser
from agent_manager.errors import AgentManagerError, Conflict, ExecutionError, ValidationFailed
from agent_manager.events import EventLog
from agent_manager.executors.base import ExecSpec, Execution, Executor
from agent_manager.executors.routing import Route, RouteRequest, route
from agent_manager.flag import Flag
from agent_manager.metrics import ServiceMetrics
from agent_manager.models import TERMINAL_STATUSES
from agent_manager.pacing import Pacer
from agent_manager.plugins import on_host, workspace_access
from agent_manager.run_request import (
    PROMPT_FILE_NAME,
    RunRequest,
    check_argv_size,
    prompt_file_path,
    working_dir_problem,
)
from agent_manager.settings import Settings
from agent_manager.slots import HostSlots
from agent_manager.store import Database, run_totals
from agent_manager.store import conversations as conv_store
from agent_manager.store import runs as run_store
from agent_manager.store.database import new_id, now
from agent_manager.workdirs import OsUser, agent_workspace, hand_over, run_as, service_owned

if TYPE_CHECKING:
    from agent_manager.workspaces import Workspaces

log = logging.getLogger("agent_manager.runs")

STDERR_KEEP = 16_384
PACED_PER_TURN = 4  # spawns or finishes per turn of the event loop (pacing.py says why)
# A finished run's answer and stderr up to this size are indexed for search in the commit of its
# final row (a few microseconds); larger ones on the writer thread, off the loop.
SEARCH_INLINE_CHARS = 4096


@dataclass
class _Live:
    """Book-keeping of one run that is queued or running in this process."""

    task: asyncio.Task[None] | None = None
    execution: Execution | None = None
    end_reason: str | None = None  # "cancelled" | "timed_out" | "stalled" once we decided to end it
    last_output: float = 0.0
    done: Flag = field(default_factory=Flag)  # its clean-up is over
    ending: asyncio.Task[None] | None = None  # held so the loop cannot drop it half-way
    phase: str = "queued"  # queued (routing, waiting for a slot) → starting → running
    backend: str | None = None
    finished: Flag = field(default_factory=Flag)  # the run's status is final
    previous_usage: dict[str, Any] | None = None  # the resumed session's last turn (Codex totals)


class RunManager:
    def __init__(self, db: Database, settings: Settings, executors: dict[str, Executor]) -> None:
        self.db = db
        self.settings = settings
        self.executors = executors
        self.events = EventLog(db, "run_events", "run_id", batched=True, spill=True)
        self._finished: set[str] = set()  # finish recorded (maybe not yet committed) in this process
        self.host_slots = HostSlots(settings)
        self.host_running = 0
        self.queued = 0
        self.pacer = Pacer(PACED_PER_TURN)  # spawns and finishes: a few per turn of the loop
        self._live: dict[str, _Live] = {}
        self.metrics = ServiceMetrics(self, executors)
        self.workspaces: Workspaces | None = None  # set by the service
        # Whether this process may switch to another OS user; a seam so tests can take the
        # non-root path while CI runs as root.
        self.is_root: Callable[[], bool] = lambda: os.geteuid() == 0

    # -- lifecycle of the manager ---------------------------------------------------------

    def recover(self) -> int:
        """Runs a previous process left queued/running can never finish: say so, once."""
        stale = run_store.unfinished(self.db)
        for run in stale:
            reason = "the service stopped before this run finished"
            finished = run_store.last_heard(self.db, run["id"]) or now()
            ms = run_totals.duration_ms(run["started_at"], finished)
            self.events.append(run["id"], "run.finished", {"status": "interrupted", "exit_code": None, "error": reason},
                               [*run_store.update_statements(run["id"], status="interrupted", error=reason,
                                                             finished_at=finished),
                                run_totals.add_statement(run["backend"], "interrupted", ms)], direct=True)
        self.metrics.load(self.db)  # after the above, so the stale runs count as interrupted
        return len(stale)

    async def shutdown(self) -> None:
        """End every live run; they are recorded as interrupted."""
        for live in list(self._live.values()):
            live.end_reason = live.end_reason or "interrupted"
            if live.execution is not None:
                with contextlib.suppress(Exception):
                    await live.execution.cancel()
            if live.task is not None:
                live.task.cancel()
        tasks = [live.task for live in self._live.values() if live.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- public operations ---------------------------------------------------------------

    def submit(self, req: RunRequest) -> dict[str, Any]:
        """Record the run as queued and start working on it in the background."""
        agent = req.agent
        kind = get_kind(agent["kind"])
        run_id = new_id("run")
        resume_id, cli_prompt = self._conversation_context(req, kind)
        invocation = (Invocation(argv=list(req.argv)) if req.argv is not None else
                      kind.build(agent["command"], list(agent["args"]), cli_prompt, agent.get("model"), resume_id,
                                 gateway=Gateway.of(agent)))
        check_argv_size(invocation.argv)
        if req.workspace is None and (problem := working_dir_problem(agent.get("working_dir"))):
            raise ValidationFailed(f"agent {agent['name']!r}: {problem}",
                                   [{"field": "working_dir", "message": problem}])
        run = run_store.create(self.db, {
            "id": run_id, "agent_id": agent["id"], "agent_name": agent["name"], "prompt": req.prompt,
            "requested_backend": req.backend or req.step_backend or agent.get("backend"),
            "conversation_id": req.conversation_id, "owner": req.owner})
        if req.new_workspace is not None and self.workspaces is not None:
            req.workspace_id = self.workspaces.record(req.new_workspace, "run", run_id, req.owner)["id"]
        if req.workspace_id:
            from agent_manager.workspaces import records as ws_records

            ws_records.link(self.db, "runs", run_id, req.workspace_id)
            run = run_store.get(self.db, run_id)
        if req.conversation_id:
            conv_store.add_message(self.db, req.conversation_id, "user", req.prompt, agent["id"], run_id)
        self.events.fresh(run_id)  # a new run: its log needs no MAX(seq) query
        self.events.append(run_id, "run.queued", {"agent": agent["name"], "resumed": resume_id is not None},
                           direct=True)
        live = _Live()
        self._live[run_id] = live
        self.queued += 1
        live.previous_usage = (run_store.last_usage(self.db, req.conversation_id, agent["id"], resume_id)
                               if resume_id and req.conversation_id else None)
        live.task = asyncio.create_task(self._run(run_id, req, kind, invocation), name=f"run {run_id}")
        return run

    async def cancel(self, run_id: str, owner: str | None = None) -> dict[str, Any]:
        run = run_store.get(self.db, run_id, owner)
        live = self._live.get(run_id)
        if run["status"] in TERMINAL_STATUSES or live is None:
            if run["status"] in TERMINAL_STATUSES:
                return run
            raise Conflict(f"run {run_id!r} is not running in this service")
        if live.end_reason is None:
            live.end_reason = "cancelled"
        if live.task is not None and (live.phase == "queued" or (
                live.phase == "starting" and not on_host(live.backend))):
            # Nothing runs yet: waiting for a slot, or a remote sandbox still being created
            # (its executor deletes it when interrupted). Answer now; the task cleans up behind.
            live.task.cancel()
            self._finish(run_id, "cancelled", None, None, "cancelled by the user", None)
            await self.events.drained(run_id)
            return run_store.get(self.db, run_id)
        await self._end(live)
        await live.done.wait()
        return run_store.get(self.db, run_id)

    def executions(self) -> dict[str, Execution]:
        """The executions of this process's runs that have started, by run id: a snapshot for
        views of what is running now (the sandboxes list, gauges); queued runs are left out."""
        return {run_id: live.execution for run_id, live in list(self._live.items()) if live.execution is not None}

    def started_on(self) -> dict[str, str]:
        """The backend of each started run of this process, by run id (a snapshot, like
        ``executions``): views that tell backends apart by their capabilities use it."""
        return {run_id: live.backend for run_id, live in list(self._live.items())
                if live.execution is not None and live.backend is not None}

    def prune(self, older_than_days: float) -> int:
        """Delete runs that finished more than ``older_than_days`` ago; returns how many."""
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        stamp = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return run_store.prune(self.db, stamp)

    async def wait(self, run_id: str) -> dict[str, Any]:
        live = self._live.get(run_id)
        if live is not None:
            await live.finished.wait()
            await self.events.drained(run_id)  # the finish is committed with its event
        return run_store.get(self.db, run_id)

    def run_as_user(self, workspace: Path) -> tuple[OsUser | None, str]:
        """(the OS user a non-admin local run switches to, None + why that is impossible)."""
        return run_as(self.settings, self.executors, workspace, is_root=self.is_root())

    # -- the run itself --------------------------------------------------------------------

    def _conversation_context(self, req: RunRequest, kind: AgentKind) -> tuple[str | None, str]:
        """Resume the CLI's own session when it can; otherwise prepend a bounded history."""
        if not req.conversation_id:
            return None, req.prompt
        conv = conv_store.get(self.db, req.conversation_id, req.owner)
        session = conv["sessions"].get(req.agent["id"])
        if kind.supports_resume and session:
            return session, req.prompt
        history = conv_store.messages(self.db, req.conversation_id, last=self.settings.history_messages)
        lines: list[str] = []
        budget = self.settings.history_chars
        for message in reversed(history):
            line = f"{message['role'].capitalize()}: {message['content']}"
            if len(line) > budget:
                break
            budget -= len(line)
            lines.insert(0, line)
        if not lines:
            return None, req.prompt
        return None, ("This is a continuing conversation. The conversation so far:\n\n" + "\n\n".join(lines)
                      + f"\n\nReply to the user's new message:\n\nUser: {req.prompt}")

    async def _run(self, run_id: str, req: RunRequest, kind: AgentKind, invocation: Invocation) -> None:
        live = self._live[run_id]
        queued = True
        try:
            agent = req.agent
            workspace = req.workspace or agent_workspace(self.settings, agent)
            user, problem = (None, "") if req.user_admin else self.run_as_user(workspace)
            if user is not None and req.workspace_id:
                user, problem = None, "its project workspace lives in the data directory, out of that user's reach"
            chosen = await route(RouteRequest(
                run_backend=req.backend, step_backend=req.step_backend, agent_backend=agent.get("backend"),
                agent_trusted=agent["trusted"], user_trusted=req.user_trusted,
                auto_approve=kind.auto_approves(list(agent["args"])), resources=req.resources,
                host_saturated=self.host_running >= self.settings.max_concurrent_runs,
                user_admin=req.user_admin, run_as=user.name if user else None, run_as_problem=problem),
                self.settings, self.executors)
            run_store.update(self.db, run_id, backend=chosen.backend, route_reason=self.settings.scrub(chosen.reason))
            live.backend = chosen.backend
            slots: contextlib.AbstractAsyncContextManager[Any] = (
                self.host_slots if on_host(chosen.backend) else contextlib.nullcontext())
            async with slots:
                queued = False
                self.queued -= 1
                if live.end_reason:
                    self._finish(run_id, live.end_reason, None, None, None, None)
                    return
                host = on_host(chosen.backend)
                self.host_running += host
                try:
                    await self._execute(run_id, req, kind, invocation, chosen, workspace, user)
                finally:
                    self.host_running -= host
        except AgentManagerError as exc:
            message = self.settings.scrub(exc.message)  # a backend's or SDK's words may carry a key
            self.events.append(run_id, "error", {"message": message})
            await self._settle(run_id, req)
            self._finish(run_id, "failed", None, None, message, None)
        except asyncio.CancelledError:  # the workspace is settled at the next start (Workspaces.recover)
            if live.end_reason == "cancelled":  # cancelled before anything ran: nothing to settle
                if self.workspaces is not None and req.workspace_id and \
                        self.workspaces.busy.get(req.workspace_id) == run_id:
                    self.workspaces.busy.pop(req.workspace_id, None)
                self._finish(run_id, "cancelled", None, None, "cancelled by the user", None)
            else:
                self._finish(run_id, "interrupted", None, None, "the service stopped during this run", None)
        except Exception as exc:  # a bug: record it on the run instead of leaving it running
            log.exception("run %s crashed", run_id)
            await self._settle(run_id, req)
            self._finish(run_id, "failed", None, None, f"internal error: {exc}", None)
        finally:
            if queued:
                self.queued -= 1
            live.finished.set()
            try:
                await self.events.drained(run_id)
            finally:
                live.done.set()
                self._live.pop(run_id, None)
                self._finished.discard(run_id)
                self.events.forget(run_id)

    async def _execute(self, run_id: str, req: RunRequest, kind: AgentKind, invocation: Invocation,
                       chosen: Route, workspace: Path, user: OsUser | None) -> None:
        live = self._live[run_id]
        agent = req.agent
        backend, reason = chosen.backend, self.settings.scrub(chosen.reason)
        timeout = req.timeout_s or agent.get("timeout_s") or self.settings.default_timeout_s
        name = PROMPT_FILE_NAME.format(run_id=run_id)
        if invocation.prompt_file_at and invocation.prompt_file is not None:
            # A service file (like orchestration inputs): a git workspace does not commit it.
            req.files[name] = invocation.prompt_file.encode()
        spec = ExecSpec(argv=list(invocation.argv), env={**invocation.env, **agent["env"]}, workspace=workspace,
                        stdin=invocation.stdin, timeout_s=timeout, resources=req.resources,
                        network=bool(agent.get("network", False)), labels={"run": run_id},
                        files=req.files, outputs=req.outputs)
        live.phase = "starting"
        executor = self.executors[backend]
        if chosen.run_as:
            if user is None or req.workspace_id or not getattr(executor, "switches_user", False):
                # Never fall back to the service's own user: that user can read the admin token.
                raise ExecutionError(f"the {backend} backend cannot run this as {chosen.run_as!r}")
            hand_over(workspace, user, self.settings)
            spec.run_as = chosen.run_as
        if req.workspace_id and self.workspaces is not None:
            spec = await self.workspaces.prepare(req.workspace_id, run_id, workspace_access(backend), spec)
        prompt_file: Path | None = None
        if name in req.files and spec.workspace is not None:
            seen_as = prompt_file_path(executor, spec.workspace, name)
            for index in invocation.prompt_file_at:
                spec.argv[index] = seen_as
            prompt_file = spec.workspace / name if on_host(backend) else None
        if spec.workspace is not None:  # an agent's working_dir keeps its owners; ours are handed over
            spec.hand_over = service_owned(spec.workspace, self.settings)
        try:
            await self.pacer.turn()
            execution = await executor.start(spec)
            live.execution = execution
            live.phase = "running"
            await self._follow(run_id, req, kind, backend, reason, timeout, execution)
        finally:
            if prompt_file is not None:
                with contextlib.suppress(OSError):
                    prompt_file.unlink()

    async def _follow(self, run_id: str, req: RunRequest, kind: AgentKind, backend: str, reason: str,
                      timeout: float, execution: Execution) -> None:
        live = self._live[run_id]
        sandbox_id = execution.info.get("sandbox_id")
        started = {"backend": backend, "route_reason": reason, **({"sandbox_id": sandbox_id} if sandbox_id else {})}
        running = run_store.update_statements(run_id, status="running", started_at=now(), sandbox_id=sandbox_id)
        self.events.append(run_id, "run.started", started, also=running, direct=True)  # row and event: one commit
        loop = asyncio.get_running_loop()
        live.last_output = loop.time()
        timer = loop.call_later(timeout, self._expire, live, "timed_out")
        watchdog = asyncio.create_task(self._watch_stall(run_id, live)) if self.settings.stall_timeout_s else None
        if live.end_reason:  # cancelled while starting
            live.ending = asyncio.create_task(self._end(live))
        parser = kind.parser()
        parser.resumed(live.previous_usage)
        if isinstance(parser, PlainTextParser):
            parser.limit = self.settings.output_cap_bytes  # the full text stays in the event log
        # PlainTextParser's own ``feed`` keeps stdout up to its limit and nothing else: past that,
        # a chunk is not decoded for it.
        plain = parser if isinstance(parser, PlainTextParser) and type(parser).feed is PlainTextParser.feed else None
        stdout_seen = False
        stderr_tail = ""
        budget = self.settings.max_stored_output_mb * 1024 * 1024 or None  # 0: keep everything
        dropped = 0
        writer = self.db.writer()
        try:
            async for chunk in execution.output():
                live.last_output = loop.time()
                # Stored as read (ASCII bytes a pipe reader did not decode, ``Chunk.raw``, or text); its
                # size in bytes without encoding a copy of ASCII text (a tenth of the loop's time once).
                body = chunk.body
                size = len(body) if isinstance(body, bytes) or body.isascii() else len(body.encode("utf-8", "replace"))
                if budget is None or size <= budget:
                    budget = None if budget is None else budget - size
                    self.events.append(run_id, "output", {"stream": chunk.stream, "text": body})
                    if writer.full():  # a producer faster than the disk waits here, not in memory
                        await self.events.room()
                else:
                    if not dropped:
                        self.events.append(run_id, "output.truncated", {
                            "limit_bytes": self.settings.max_stored_output_mb * 1024 * 1024})
                    budget, dropped = 0, dropped + size
                if chunk.stream == "stdout":
                    stdout_seen = stdout_seen or bool(chunk.text.strip())
                else:
                    stderr_tail = (stderr_tail + chunk.text)[-STDERR_KEEP:]
                if plain is None or (chunk.stream == "stdout" and not plain.truncated):  # else it ignores the text
                    for event in parser.feed(chunk.stream, chunk.text):
                        self.events.append(run_id, event.type, event.data)
            for event in parser.close():
                self.events.append(run_id, event.type, event.data)
            code = await execution.wait()
        finally:
            timer.cancel()
            if watchdog:
                watchdog.cancel()
            if dropped:  # said once, at the end, where a reader of the log looks for it
                self.events.append(run_id, "output", {"stream": "stderr", "text": (
                    f"\n[agent-manager: output truncated: {dropped} more bytes were not stored "
                    f"(max_stored_output_mb = {self.settings.max_stored_output_mb})]\n")})
        if live.end_reason:
            status = "failed" if live.end_reason == "stalled" else live.end_reason
            error = {"cancelled": "cancelled by the user", "timed_out": f"timed out after {timeout:g} s",
                     "stalled": "killed: no output for too long", "interrupted": "the service stopped"}.get(
                         live.end_reason, live.end_reason)
        elif code == 0 and not parser.error:
            status, error = "succeeded", None
        else:
            status = "failed"
            error = parser.error or (parser.failure(code, stderr_tail) if not stdout_seen or not parser.answer
                                     else None)
            error = error or f"exited with code {code}"
        answer = parser.answer
        if isinstance(parser, PlainTextParser) and parser.truncated:
            answer = f"{answer}\n[output truncated at {parser.limit} characters; the event log has all of it]"
        await self._settle(run_id, req, backend)
        await self.pacer.turn()
        self._finish(run_id, status, code, answer, error, parser.usage, req, parser.session_id, stderr_tail)

    async def _settle(self, run_id: str, req: RunRequest, backend: str | None = None) -> None:
        """Commit what the agent left in its workspace before the run is reported finished, so
        whoever sees ``run.finished`` can review the diff. A failure is said, never fatal."""
        if not req.workspace_id or self.workspaces is None or self.workspaces.busy.get(req.workspace_id) != run_id:
            return  # no workspace, or this run never got to use it (e.g. another run holds it)
        if backend is None:
            backend = run_store.get(self.db, run_id)["backend"]
        try:
            ws = await asyncio.shield(self.workspaces.settle(req.workspace_id, req.prompt, workspace_access(backend),
                                                             req.files,
                                                                      run_id))
        except AgentManagerError as exc:
            self.events.append(run_id, "error", {"message": f"could not commit the workspace: {exc.message}"})
            return
        from agent_manager.workspaces import records as ws_records

        self.events.append(run_id, "workspace", ws_records.public(ws) or {})

    def _expire(self, live: _Live, reason: str) -> None:
        if live.end_reason is None:
            live.end_reason = reason
            live.ending = asyncio.create_task(self._end(live))

    async def _end(self, live: _Live) -> None:
        if live.execution is not None:
            await live.execution.cancel()

    async def _watch_stall(self, run_id: str, live: _Live) -> None:
        limit = self.settings.stall_timeout_s
        loop = asyncio.get_running_loop()
        reported = False
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            silent = loop.time() - live.last_output
            if silent >= limit and not reported:
                reported = True
                self.events.append(run_id, "run.stalled", {"silent_s": round(silent, 1),
                                                           "killing": self.settings.stall_kill})
                if self.settings.stall_kill:
                    self._expire(live, "stalled")
            elif silent < limit and reported:
                reported = False
                self.events.append(run_id, "run.resumed", {})

    def _finish(self, run_id: str, status: str, code: int | None, answer: str | None, error: str | None,
                usage: dict[str, Any] | None, req: RunRequest | None = None, session_id: str | None = None,
                stderr: str = "") -> None:
        run = run_store.get(self.db, run_id)
        if run["status"] in TERMINAL_STATUSES or run_id in self._finished:
            return
        self._finished.add(run_id)
        finished = now()
        started = run["started_at"] or finished
        ms = run_totals.duration_ms(started, finished)
        final_row = [*run_store.update_statements(  # the search index follows on the writer thread
            run_id, search=False, status=status, exit_code=code, output=answer, error=error, usage=usage,
            session_id=session_id, finished_at=finished, started_at=started),
            run_totals.add_statement(run["backend"], status, ms)]  # the /metrics totals, in the same commit
        if req is not None and req.conversation_id:
            reply = answer if answer is not None else f"[{status}] {error or ''}".strip()
            conv_store.add_message(self.db, req.conversation_id, "assistant", reply, req.agent["id"], run_id)
            if session_id:
                conv_store.set_session(self.db, req.conversation_id, req.agent["id"], session_id)
        elif run["conversation_id"] and status != "succeeded":
            conv_store.add_message(self.db, run["conversation_id"], "assistant", f"[{status}] {error or ''}",
                                   run["agent_id"], run_id)
        data: dict[str, Any] = {"status": status, "exit_code": code}
        if usage:
            data["usage"] = usage
        if error:
            data["error"] = error
        search = run_store.search_statements(run_id, answer, stderr)
        inline = len(answer or "") + len(stderr) <= SEARCH_INLINE_CHARS
        self.events.append(run_id, "run.finished", data, also=final_row + (search if inline else []),
                           direct=True)  # row, event (and a small answer's index entry): one commit
        if not inline:
            self.db.commit_later(search)
        live = self._live.get(run_id)
        if live is not None:
            live.finished.set()
        self.metrics.run_finished(run["backend"], status, ms)
