"""The DAG runner: every step of a plan runs, each as early as its dependencies allow.

Why a scheduler loop instead of walking the graph: a step becomes *ready* the
moment its last dependency succeeds (graphlib's ``TopologicalSorter``, told of each success
as completions arrive on one queue), and ready steps start while fewer than ``max_parallel``
run. Nothing waits on a path of the graph, so independent branches never wait for each
other, and a failure marks only its own descendants ``skipped``.

Every state change is written to the database in the same transaction as the event that
announces it (``_emit``), so a viewer, a reconnecting SSE client and ``resume`` after a
crash all see the same truth. Agent and shell steps are ordinary runs of the RunManager
(live events, backends, timeouts, process-tree cancel); ``write_file`` runs in the service,
confined to the orchestration's workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import shlex
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from agent_manager.agents import DEFAULT_KIND
from agent_manager.errors import AgentManagerError, Conflict, NotFound
from agent_manager.events import EventLog
from agent_manager.flag import Flag
from agent_manager.orchestration.branches import StepBranches
from agent_manager.orchestration.plan import Plan, Step, edges, heights, render
from agent_manager.run_request import RunRequest
from agent_manager.runs import RunManager
from agent_manager.settings import Settings
from agent_manager.store import Database
from agent_manager.store import agents as agent_store
from agent_manager.store import orchestrations as store
from agent_manager.store.database import new_id, now
from agent_manager.workdirs import orchestration_workspace, write_beneath

log = logging.getLogger("agent_manager.orchestration")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
OUTPUT_KEEP = 1_048_576


@dataclass
class _Attempt:
    status: str  # succeeded | failed | cancelled
    output: str | None = None
    error: str | None = None


@dataclass
class _Live:
    """One orchestration being driven by this process."""

    id: str
    plan: Plan
    workspace: Path
    max_parallel: int
    owner: str | None
    user_trusted: bool
    status: dict[str, str]
    outputs: dict[str, str]
    attempts: dict[str, int]
    user_admin: bool = True
    runs: dict[str, str] = field(default_factory=dict)  # step id → its current run
    cancelling: bool = False
    branches: StepBranches | None = None  # on a project: a git workspace per step
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: Flag = field(default_factory=Flag)
    task: asyncio.Task[None] | None = None


class OrchestrationEngine:
    def __init__(self, db: Database, settings: Settings, runs: RunManager) -> None:
        self.db = db
        self.settings = settings
        self.runs = runs
        self.events = EventLog(db, "orchestration_events", "orchestration_id")
        self.live: dict[str, _Live] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def recover(self) -> int:
        """Orchestrations a previous process left running can only be resumed: say so."""
        stale = store.with_status(self.db, "running")
        for orch_id in stale:
            with self.db.transaction():
                for row in store.steps(self.db, orch_id):
                    if row["status"] == "running":
                        store.update_step(self.db, orch_id, row["step_id"], status="cancelled", finished_at=now(),
                                          error="the service stopped during this step")
                self._finish_row(orch_id, "interrupted", "the service stopped; resume to continue")
        return len(stale)

    async def shutdown(self) -> None:
        """Stop driving; running orchestrations are recorded as interrupted (resumable)."""
        for live in list(self.live.values()):
            if live.task is not None:
                live.task.cancel()
        await asyncio.gather(*(lv.task for lv in list(self.live.values()) if lv.task), return_exceptions=True)

    # -- public operations -------------------------------------------------------------------

    def create(self, plan: Plan, owner: str | None = None, user_trusted: bool = True,
               base: Any = None, user_admin: bool = True) -> dict[str, Any]:
        """Record the orchestration and start running it; returns its view. With ``base`` (a
        resolved ``workspaces.Base``) every step works on its own branch of the project."""
        orch_id = new_id("orch")
        workspace = orchestration_workspace(self.settings, orch_id)
        workspace.mkdir(parents=True, exist_ok=True)
        max_parallel = plan.max_parallel or self.settings.orchestration_max_parallel
        store.create(self.db, {"id": orch_id, "name": plan.name, "status": "running",
                               "plan": plan.model_dump(mode="json", exclude_none=True),
                               "max_parallel": max_parallel, "workspace": str(workspace), "owner": owner,
                               "started_at": now()}, [s.id for s in plan.steps])
        ids = [s.id for s in plan.steps]
        live = _Live(orch_id, plan, workspace, max_parallel, owner, user_trusted,
                     dict.fromkeys(ids, "pending"), {}, dict.fromkeys(ids, 0), user_admin)
        if base is not None and self.runs.workspaces is not None:
            from agent_manager.workspaces import records as ws_records

            ows = self.runs.workspaces.record(base, "orchestration", orch_id, owner)
            ws_records.link(self.db, "orchestrations", orch_id, ows["id"])
            live.branches = StepBranches(self.db, self.runs.workspaces, ows["id"])
        self._start(live, resumed=False)
        return store.view(self.db, orch_id)

    def resume(self, orch_id: str, owner: str | None = None, user_trusted: bool = True,
               only: str | None = None, user_admin: bool = True) -> dict[str, Any]:
        """Re-run every step that did not succeed, reusing the stored outputs of those that did.
        ``only``: retry that one failed (or cancelled) step and the steps below it that were skipped
        or cancelled because of it; other failed steps keep their result."""
        orch = store.get_row(self.db, orch_id, owner)
        if orch_id in self.live or orch["status"] == "running":
            raise Conflict(f"orchestration {orch_id!r} is still running")
        plan = Plan.model_validate(orch["plan"])
        rows = store.steps(self.db, orch_id)
        reused = [r["step_id"] for r in rows if r["status"] == "succeeded"]
        rerun = [r["step_id"] for r in rows if r["status"] != "succeeded"]
        if only is not None:
            by_id = {r["step_id"]: r for r in rows}
            if only not in by_id:
                raise NotFound(f"orchestration {orch_id!r} has no step {only!r}")
            if by_id[only]["status"] not in ("failed", "cancelled", "skipped"):
                raise Conflict(f"step {only!r} is {by_id[only]['status']}: only a failed, skipped or cancelled "
                               "step can be retried")
            children = edges(plan)
            below, todo = {only}, [only]
            while todo:
                for child in children[todo.pop()]:
                    if child not in below:
                        below.add(child)
                        todo.append(child)
            rerun = [s for s in rerun if s in below and by_id[s]["status"] != "failed" or s == only]
        if not rerun:
            raise Conflict(f"orchestration {orch_id!r} has nothing to resume: every step succeeded")
        with self.db.transaction():
            for step_id in rerun:
                store.update_step(self.db, orch_id, step_id, status="pending", queued_at=None, started_at=None,
                                  finished_at=None, error=None, output=None)
            store.update(self.db, orch_id, status="running", finished_at=None, error=None)
            self.events.append(orch_id, "orchestration.resumed", {"rerun": rerun, "reused": reused})
        workspace = Path(orch["workspace"])
        workspace.mkdir(parents=True, exist_ok=True)
        live = _Live(orch_id, plan, workspace, orch["max_parallel"], orch["owner"], user_trusted,
                     {r["step_id"]: "pending" if r["step_id"] in rerun else r["status"] for r in rows},
                     {r["step_id"]: r["output"] or "" for r in rows if r["status"] == "succeeded"},
                     {r["step_id"]: r["attempts"] for r in rows}, user_admin)
        if orch.get("workspace_id") and self.runs.workspaces is not None:
            live.branches = StepBranches(self.db, self.runs.workspaces, orch["workspace_id"])
        self._start(live, resumed=True)
        return store.view(self.db, orch_id)

    async def cancel(self, orch_id: str, owner: str | None = None) -> dict[str, Any]:
        """Cancel the running steps' runs (their process trees end) and start nothing new."""
        store.get_row(self.db, orch_id, owner)
        live = self.live.get(orch_id)
        if live is not None:
            live.cancelling = True
            live.wake.set()
            await asyncio.gather(*(self.runs.cancel(r) for r in list(live.runs.values())), return_exceptions=True)
            await live.done.wait()
        return store.view(self.db, orch_id)

    async def wait(self, orch_id: str) -> dict[str, Any]:
        live = self.live.get(orch_id)
        if live is not None:
            await live.done.wait()
        return store.view(self.db, orch_id)

    # -- persistence: state first, then the event, in one transaction -------------------------

    def _emit(self, live: _Live, type_: str, data: dict[str, Any], step: str | None = None,
              **changes: Any) -> None:
        with self.db.transaction():
            if step is not None and changes:
                store.update_step(self.db, live.id, step, **changes)
                if "status" in changes:
                    live.status[step] = changes["status"]
            self.events.append(live.id, type_, data)

    def _finish_row(self, orch_id: str, status: str, error: str | None) -> dict[str, int]:
        counts = store.counts(store.steps(self.db, orch_id))
        with self.db.transaction():
            store.update(self.db, orch_id, status=status, error=error, finished_at=now())
            self.events.append(orch_id, "orchestration.finished", {"status": status, "counts": counts,
                                                                   **({"error": error} if error else {})})
        return counts

    # -- the scheduler -----------------------------------------------------------------------

    def _start(self, live: _Live, resumed: bool) -> None:
        self.live[live.id] = live
        live.task = asyncio.create_task(self._drive(live, resumed), name=f"orchestration {live.id}")

    async def _drive(self, live: _Live, resumed: bool) -> None:
        plan = live.plan
        children = edges(plan)
        height = heights(plan)
        position = {s.id: i for i, s in enumerate(plan.steps)}
        # graphlib keeps track of what is ready. Only pending steps run (a retry of one step leaves
        # the other failed ones as they are): a dependency that already succeeded is no edge, and
        # one that will not run (it failed before) is a node never marked done, so nothing below
        # it becomes ready.
        to_run = [s for s in plan.steps if live.status[s.id] == "pending"]
        sorter: TopologicalSorter[str] = TopologicalSorter()
        for step in to_run:
            sorter.add(step.id, *(d for d in step.depends_on if live.status[d] != "succeeded"))
        sorter.prepare()
        ready: list[tuple[int, int, str]] = []
        finished: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        tasks: dict[str, asyncio.Task[None]] = {}

        def release() -> None:
            for step_id in sorted(sorter.get_ready(), key=position.__getitem__):
                if live.status[step_id] == "pending" and not live.cancelling:
                    self._queue(live, step_id, ready, height[step_id], position[step_id])

        try:
            self._emit(live, "orchestration.started", {"steps": len(plan.steps), "max_parallel": live.max_parallel,
                                                       "resumed": resumed, "to_run": len(to_run)})
            release()
            while True:
                while ready and len(tasks) < live.max_parallel and not live.cancelling:
                    step_id = heapq.heappop(ready)[2]
                    tasks[step_id] = asyncio.create_task(self._step(live, step_id, finished))
                if not tasks:
                    break
                step_id, status = await finished.get()
                tasks.pop(step_id)
                if status == "succeeded":
                    sorter.done(step_id)
                    release()
                elif status == "failed":
                    self._skip_descendants(live, step_id, children)
            if live.branches is not None:
                try:
                    await live.branches.result(live.id, plan, live.status)
                except AgentManagerError as exc:
                    self._emit(live, "error", {"message": f"cannot merge the steps' branches: {exc.message}"})
            if live.cancelling:
                final, error = "cancelled", "cancelled by the user"
                for step_id, state in list(live.status.items()):
                    if state == "pending":  # never started: it will not run now either
                        self._emit(live, "step.finished", {"step": step_id, "status": "cancelled",
                                                           "duration_s": None, "error": error},
                                   step_id, status="cancelled", error=error)
            else:
                for step_id, state in list(live.status.items()):
                    if state == "pending":  # an upstream step kept its failure (a retry of another step)
                        reason = "an upstream step did not succeed"
                        self._emit(live, "step.finished", {"step": step_id, "status": "skipped", "duration_s": None,
                                                           "error": reason}, step_id, status="skipped", error=reason)
                if all(s == "succeeded" for s in live.status.values()):
                    final, error = "succeeded", None
                else:
                    final, error = "failed", _failure_summary(live.status)
            self._finish_row(live.id, final, error)
        except asyncio.CancelledError:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            with self.db.transaction():
                for step_id, status in live.status.items():
                    if status == "running":
                        store.update_step(self.db, live.id, step_id, status="cancelled", finished_at=now(),
                                          error="the service stopped during this step")
                self._finish_row(live.id, "interrupted", "the service stopped; resume to continue")
        except Exception as exc:  # a bug: record it instead of leaving the orchestration running
            log.exception("orchestration %s crashed", live.id)
            self._finish_row(live.id, "failed", f"internal error: {exc}")
        finally:
            self.live.pop(live.id, None)
            self.events.forget(live.id)
            live.done.set()

    def _queue(self, live: _Live, step_id: str, ready: list[tuple[int, int, str]], height: int, pos: int) -> None:
        self._emit(live, "step.queued", {"step": step_id}, step_id, queued_at=now())
        heapq.heappush(ready, (-height, pos, step_id))

    def _skip_descendants(self, live: _Live, failed: str, children: dict[str, list[str]]) -> None:
        todo, seen = list(children[failed]), set()
        while todo:
            step_id = todo.pop()
            if step_id in seen:
                continue
            seen.add(step_id)
            todo.extend(children[step_id])
            if live.status[step_id] == "pending":
                reason = f"upstream step {failed!r} failed"
                self._emit(live, "step.finished", {"step": step_id, "status": "skipped", "duration_s": None,
                                                   "error": reason}, step_id, status="skipped", error=reason)

    # -- one step ----------------------------------------------------------------------------

    async def _step(self, live: _Live, step_id: str, finished: asyncio.Queue[tuple[str, str]]) -> None:
        status = "failed"
        try:
            status = await self._attempts(live, live.plan.step(step_id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in one step must not stall the whole graph
            log.exception("step %s of %s crashed", step_id, live.id)
            self._emit(live, "step.finished", {"step": step_id, "status": "failed", "error": str(exc)},
                       step_id, status="failed", finished_at=now(), error=f"internal error: {exc}")
        finished.put_nowait((step_id, status))

    async def _attempts(self, live: _Live, step: Step) -> str:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Persisted now (it counts as running); announced by step.started once its run has a backend.
        store.update_step(self.db, live.id, step.id, status="running", started_at=now())
        live.status[step.id] = "running"
        result = _Attempt("cancelled", error="cancelled by the user")
        for attempt in range(step.retries + 1):
            if live.cancelling:
                result = _Attempt("cancelled", error="cancelled by the user")
                break
            live.attempts[step.id] += 1
            result = await self._attempt(live, step, attempt + 1)
            if result.status != "failed" or attempt == step.retries or live.cancelling:
                break
            delay = step.retry_delay_s * 2 ** attempt
            self._emit(live, "step.retrying", {"step": step.id, "attempt": attempt + 1, "delay_s": delay,
                                               "error": result.error}, step.id, error=result.error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.wake.wait(), delay)
        if result.status == "cancelled" or (live.cancelling and result.status != "succeeded"):
            result = _Attempt("cancelled", error=result.error or "cancelled by the user")
        if result.status == "succeeded":
            live.outputs[step.id] = result.output or ""
        data = {"step": step.id, "status": result.status, "attempts": live.attempts[step.id],
                "duration_s": round(loop.time() - started, 3), **({"error": result.error} if result.error else {})}
        self._emit(live, "step.finished", data, step.id, status=result.status, finished_at=now(),
                   output=result.output, error=result.error)
        return result.status

    async def _attempt(self, live: _Live, step: Step, number: int) -> _Attempt:
        ws: dict[str, Any] | None = None
        if live.branches is not None:
            ws, why = await live.branches.prepare(live.id, step, live.owner)
            if ws is None:
                return _Attempt("failed", error=why)
        if step.kind == "write_file":
            return await self._write_file(live, step, number, ws)
        if step.kind == "shell":
            argv = [render(arg, live.outputs) for arg in step.argv or []]
            # Routed like any agent step (the user's trust and admin-ness decide where it runs);
            # network only when the step asks for it, as agents only get it when configured.
            shell: dict[str, Any] = {"id": "shell", "name": "shell", "kind": DEFAULT_KIND, "command": argv[0],
                                     "args": argv[1:],
                                     "env": {}, "working_dir": None, "model": None, "backend": None,
                                     "trusted": True, "timeout_s": self.settings.default_timeout_s,
                                     "network": bool(step.network)}
            request = RunRequest(agent=shell, prompt=shlex.join(argv), argv=argv)
        else:
            agent = agent_store.find(self.db, step.agent or "")
            if agent is None:
                return _Attempt("failed", error=f"agent {step.agent!r} no longer exists")
            request = RunRequest(agent=agent, prompt=render(step.prompt or "", live.outputs))
        request.step_backend = step.backend
        request.timeout_s = step.timeout_s
        request.owner = live.owner
        request.user_trusted = live.user_trusted
        request.user_admin = live.user_admin
        request.workspace = live.workspace
        request.workspace_id = ws["id"] if ws else None
        try:
            run = self.runs.submit(request)
        except Exception as exc:  # e.g. an agent whose kind cannot build argv
            return _Attempt("failed", error=getattr(exc, "message", str(exc)))
        run_id = run["id"]
        live.runs[step.id] = run_id
        try:
            if live.cancelling:
                with contextlib.suppress(Exception):
                    await self.runs.cancel(run_id)
            started = await self._run_started(run_id)
            if started is not None:
                backend = str(started.get("backend"))
                self._emit(live, "step.started", {"step": step.id, "attempt": number, "run_id": run_id,
                                                  "backend": backend, "route_reason": started.get("route_reason")},
                           step.id, run_id=run_id, backend=backend, attempts=live.attempts[step.id])
            else:
                store.update_step(self.db, live.id, step.id, run_id=run_id, attempts=live.attempts[step.id])
            final = await self.runs.wait(run_id)
        finally:
            live.runs.pop(step.id, None)
        if final["status"] == "succeeded":
            return _Attempt("succeeded", output=_clean(final["output"]))
        if final["status"] in ("cancelled", "interrupted"):
            return _Attempt("cancelled", error=final["error"] or final["status"])
        return _Attempt("failed", error=final["error"] or f"run {final['status']}")

    async def _run_started(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``run.started`` data (backend, route reason), or None if it ended first."""
        after = 0
        while True:
            for event in self.runs.events.read(run_id, after, live=True):
                after = event["seq"]
                if event["type"] == "run.started":
                    return dict(event["data"])
                if event["type"] == "run.finished":
                    return None
            await self.runs.events.wait(run_id, after, 5.0)

    async def _write_file(self, live: _Live, step: Step, number: int, ws: dict[str, Any] | None) -> _Attempt:
        self._emit(live, "step.started", {"step": step.id, "attempt": number, "run_id": None, "backend": "service"},
                   step.id, backend="service", attempts=live.attempts[step.id])
        if ws is not None and live.branches is not None:
            try:
                await live.branches.write(ws, step.path or "", render(step.content or "", live.outputs))
            except (OSError, AgentManagerError) as exc:
                return _Attempt("failed", error=f"cannot write {step.path}: {getattr(exc, 'message', exc)}")
            return _Attempt("succeeded", output=step.path)
        root = live.workspace.resolve()
        target = (root / (step.path or "")).resolve()
        if not target.is_relative_to(root) or target == root:
            return _Attempt("failed", error=f"path {step.path!r} escapes the workspace")
        try:
            # Walked without following symlinks: an earlier (or parallel) step of the plan may
            # have swapped one in to redirect this write outside the workspace.
            write_beneath(root, str(target.relative_to(root)), render(step.content or "", live.outputs).encode())
        except OSError as exc:
            return _Attempt("failed", error=f"cannot write {step.path}: {exc.strerror or exc}")
        return _Attempt("succeeded", output=step.path)


def _clean(output: str | None) -> str:
    """A run's answer as a step output: bounded, without the trailing newline(s) CLIs print."""
    return (output or "")[:OUTPUT_KEEP].rstrip("\n")


def _failure_summary(status: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    parts = [f"{counts[s]} {s}" for s in ("failed", "skipped", "cancelled", "pending") if counts.get(s)]
    return f"{counts.get('succeeded', 0)} of {len(status)} steps succeeded; " + ", ".join(parts)
