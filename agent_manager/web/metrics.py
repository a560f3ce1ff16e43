"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

import bisect

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from agent_manager import plugins
from agent_manager.plugins import HOST, ISOLATED
from agent_manager.service import Service
from agent_manager.web.deps import service

router = APIRouter(tags=["service"])
BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


def _histogram(name: str, help_: str, values: list[float]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    ordered = sorted(values)
    for bound in BUCKETS:
        lines.append(f'{name}_bucket{{le="{bound:g}"}} {bisect.bisect_right(ordered, bound)}')
    lines += [f'{name}_bucket{{le="+Inf"}} {len(ordered)}', f"{name}_sum {sum(ordered):.6f}",
              f"{name}_count {len(ordered)}"]
    return lines


def render(svc: Service) -> str:
    runs = svc.runs
    lines = ["# HELP agent_manager_runs_total Finished runs by backend and status.",
             "# TYPE agent_manager_runs_total counter"]
    for (backend, status), count in sorted(runs.finished_counts.items()):
        lines.append(f'agent_manager_runs_total{{backend="{backend}",status="{status}"}} {count}')
    lines += _histogram("agent_manager_run_duration_seconds", "Run duration from start to finish.", runs.durations)
    lines += ["# HELP agent_manager_queue_depth Runs waiting for a slot.", "# TYPE agent_manager_queue_depth gauge",
              f"agent_manager_queue_depth {runs.queued}",
              "# HELP agent_manager_runs_running Runs executing on this host.",
              "# TYPE agent_manager_runs_running gauge", f"agent_manager_runs_running {runs.host_running}"]
    live = {name: getattr(ex, "live", None) for name, ex in svc.executors.items()}
    lines += ["# HELP agent_manager_sandboxes_live Sandboxes alive per backend.",
              "# TYPE agent_manager_sandboxes_live gauge"]
    live_counts = {name: count for name, count in live.items() if isinstance(count, int)}
    for name in svc.executors:  # isolated backends on this host: their sandboxes are the live runs
        if {HOST, ISOLATED} <= plugins.capabilities(name):
            live_counts.setdefault(name, sum(1 for run in runs.live.values()
                                             if run.execution is not None and run.backend == name))
    for name, count in sorted(live_counts.items()):
        lines.append(f'agent_manager_sandboxes_live{{backend="{name}"}} {count}')
    latencies: list[float] = []
    for executor in svc.executors.values():
        latencies.extend(getattr(executor, "create_latencies", []) or [])
    lines += _histogram("agent_manager_sandbox_create_seconds", "Time to create a sandbox.", latencies)
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(svc: Service = Depends(service)) -> PlainTextResponse:
    return PlainTextResponse(render(svc), media_type="text/plain; version=0.0.4")
