"""The service's Prometheus metrics (``GET /metrics``), built with ``prometheus_client``.

Each service has a ``CollectorRegistry`` of its own, never the library's global one: tests
(and an embedding program) run several services in one process, each with its own counts.

* ``agent_manager_runs_total{backend,status}`` (Counter) and ``agent_manager_run_duration_seconds``
  (histogram) count every run ever finished on this data directory. At start they are loaded
  from the sums in the database (``store.run_totals``, to which each finish adds itself in its
  own commit), then each run adds itself as it finishes, so neither a restart nor retention
  makes them go back.
  Durations are kept as whole milliseconds, so ``_sum`` is exact and equal before and after a
  restart (a float sum could come back a hair lower and look like a counter reset).
* Gauges (queue depth, runs on this host, live sandboxes) and each backend's sandbox-create
  latency histogram are read from the run manager and the executors when scraped.

Backend names come from the run rows and the executors; this module names none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent_manager.executors.base import Executor, KeepsSandboxes
from agent_manager.store import run_totals
from agent_manager.store.database import Queryable
from agent_manager.store.run_totals import BUCKETS_MS, INF_MS, NO_DURATION

# Sandbox creation takes from a fraction of a second (warm image) to minutes (cold pull).
CREATE_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class RunCounts(Protocol):
    """What the gauges read from the run manager at scrape time."""

    queued: int
    host_running: int


class _Durations(Collector):
    """Finished runs' durations as a histogram whose counts are exact integers."""

    def __init__(self) -> None:
        self.buckets: dict[int, int] = defaultdict(int)  # bucket bound (ms) → runs, not cumulative
        self.sum_ms = 0

    def add(self, bucket_ms: int, runs: int, duration_ms: int) -> None:
        if bucket_ms != NO_DURATION:
            self.buckets[bucket_ms] += runs
            self.sum_ms += duration_ms

    def collect(self) -> Iterator[Metric]:
        cumulative, rows = 0, []
        for bound in (*BUCKETS_MS, INF_MS):
            cumulative += self.buckets.get(bound, 0)
            rows.append(("+Inf" if bound == INF_MS else f"{bound / 1000:g}", cumulative))
        yield HistogramMetricFamily("agent_manager_run_duration_seconds",
                                    "Duration of finished runs, from start to finish.",
                                    buckets=rows, sum_value=self.sum_ms / 1000)


class _Now(Collector):
    """Gauges and per-backend sandbox metrics, read when scraped."""

    def __init__(self, runs: RunCounts, executors: Mapping[str, Executor]) -> None:
        self.runs, self.executors = runs, executors

    def _sandboxed(self) -> Iterable[tuple[str, KeepsSandboxes]]:
        return sorted((name, ex) for name, ex in self.executors.items() if isinstance(ex, KeepsSandboxes))

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("agent_manager_queue_depth", "Runs waiting for a slot.", value=self.runs.queued)
        yield GaugeMetricFamily("agent_manager_runs_running", "Runs executing on this host.",
                                value=self.runs.host_running)
        live = GaugeMetricFamily("agent_manager_sandboxes_live", "Sandboxes alive per backend.", labels=["backend"])
        created = HistogramMetricFamily("agent_manager_sandbox_create_seconds", "Time to create a sandbox.",
                                        labels=["backend"])
        for name, executor in self._sandboxed():
            live.add_metric([name], executor.sandboxes_live())
            if executor.create_seconds is None:
                continue
            buckets: list[tuple[str, float]] = []
            total = 0.0
            for metric in executor.create_seconds.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_bucket"):
                        buckets.append((sample.labels["le"], sample.value))
                    elif sample.name.endswith("_sum"):
                        total = sample.value
            created.add_metric([name], buckets, total)
        yield live
        yield created


class ServiceMetrics:
    """The registry behind ``/metrics`` and the counters the run manager feeds."""

    def __init__(self, runs: RunCounts, executors: Mapping[str, Executor]) -> None:
        self.registry = CollectorRegistry()
        self.runs_total = Counter("agent_manager_runs", "Finished runs by backend and status.",
                                  ["backend", "status"], registry=self.registry)
        self.durations = _Durations()
        self.registry.register(self.durations)
        self.registry.register(_Now(runs, executors))

    def load(self, db: Queryable) -> None:
        """Start from every run this data directory has finished (call once, at start)."""
        for total in run_totals.load(db):
            self.runs_total.labels(total.backend, total.status).inc(total.runs)
            self.durations.add(total.bucket_ms, total.runs, total.duration_ms)

    def run_finished(self, backend: str | None, status: str, duration_ms: int | None) -> None:
        """Count a run whose finish is being committed with ``run_totals.add_statement``."""
        self.runs_total.labels(backend or "none", status).inc()
        self.durations.add(run_totals.bucket_of(duration_ms), 1, duration_ms or 0)

    def exposition(self) -> bytes:
        """The Prometheus text format (0.0.4) of everything above."""
        return generate_latest(self.registry)


def create_histogram() -> Histogram:
    """A sandbox-create latency histogram for an executor (bounded: fixed buckets, in no registry;
    ``/metrics`` labels it with the backend's name)."""
    return Histogram("agent_manager_sandbox_create_seconds", "Time to create a sandbox.", buckets=CREATE_BUCKETS,
                     registry=None)
