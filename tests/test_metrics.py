"""/metrics, parsed with prometheus_client's own parser: totals past 10,000 runs never go back,
between scrapes, through retention and across a restart (the runs of an upgraded database
included); sandbox-create latency stays bounded."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

import httpx
from conftest import in_process_client, running_service
from helpers import parse_metrics, wait_run

from agent_manager.executors.daytona import DaytonaExecutor
from agent_manager.settings import Settings
from agent_manager.store.database import Database

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
STORED = 10_400  # finished runs put straight into the database, most of them long ago
BACKENDS = ("local", "sandbox", "plug-in-x", None)  # labels come from the rows, whatever they say
STATUSES = ("succeeded", "failed", "cancelled", "timed_out", "interrupted")
RISING = ("_total", "_count", "_sum", "_bucket")


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _store_finished_runs(settings: Settings) -> tuple[dict[tuple[str, str], int], list[int]]:
    """A database from before the run totals (migration 0011) holding STORED finished runs, as
    an upgraded install has them; returns (runs by (backend, status), the durations in ms)."""
    db = Database(settings.db_path)
    db.migrate()
    with db.transaction() as conn:
        conn.execute("DROP TABLE run_totals")
        conn.execute("DROP TABLE sessions")
        conn.execute("DELETE FROM schema_version WHERE version = 11")
    counts: dict[tuple[str, str], int] = {}
    durations: list[int] = []
    start = datetime.now(UTC) - timedelta(days=400)
    rows = []
    for i in range(STORED):
        backend, status = BACKENDS[i % len(BACKENDS)], STATUSES[i % len(STATUSES)]
        began = start + timedelta(minutes=i)
        ms = (i * 7919) % 5_000_000 if i % 3 else i % 150  # 0 ms .. 83 min, every bucket gets some
        started = None if i % 97 == 0 else _stamp(began)  # some never started: no duration
        if started is not None:
            durations.append(ms)
        counts[(backend or "none", status)] = counts.get((backend or "none", status), 0) + 1
        rows.append((f"run_seed{i:06d}", "agent_x", "x", "p", status, backend, _stamp(began), started,
                     _stamp(began + timedelta(milliseconds=ms))))
    with db.transaction() as conn:
        conn.executemany("INSERT INTO runs (id, agent_id, agent_name, prompt, status, backend, created_at,"
                         " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    assert db.migrate() == [11]  # the service's start would do the same
    db.close()
    return counts, durations


def _never_back(before: Samples, after: Samples) -> None:
    for key, value in before.items():
        if key[0].endswith(RISING):
            assert key in after, f"{key} vanished"
            assert after[key] >= value, f"{key} went back from {value} to {after[key]}"


async def test_totals_past_10000_runs_never_go_back(settings: Settings) -> None:
    counts, durations = _store_finished_runs(settings)
    timed = len(durations)
    scrapes: list[Samples] = []
    async with running_service(settings) as svc, in_process_client(settings, svc) as client:
        scrapes.append(parse_metrics((await client.get("/metrics")).text))
        first = scrapes[0]
        for (backend, status), n in counts.items():
            assert first[("agent_manager_runs_total", (("backend", backend), ("status", status)))] == n
        assert first[("agent_manager_run_duration_seconds_count", ())] == timed > 10_000
        assert first[("agent_manager_run_duration_seconds_sum", ())] == sum(durations) / 1000
        for le, limit in (("0.1", 100), ("1", 1000), ("60", 60_000), ("3600", 3_600_000), ("+Inf", 10**12)):
            expected = sum(1 for ms in durations if ms <= limit)
            assert 0 < first[("agent_manager_run_duration_seconds_bucket", (("le", le),))] == expected

        await client.post("/api/agents", json={"name": "e", "command": "echo"})
        for i in range(4):  # real runs through the API, a scrape after each
            run = await wait_run(client, (await client.post("/api/runs", json={"agent": "e", "prompt": f"{i}"}))
                                 .json()["id"])
            assert run["status"] == "succeeded"
            scrapes.append(parse_metrics((await client.get("/metrics")).text))
            _never_back(scrapes[-2], scrapes[-1])
        local_ok = ("agent_manager_runs_total", (("backend", "local"), ("status", "succeeded")))
        assert scrapes[-1][local_ok] == first[local_ok] + 4
        assert scrapes[-1][("agent_manager_run_duration_seconds_count", ())] == timed + 4

        # Retention deletes almost all of them; the totals stay.
        pruned = await client.post("/api/runs/prune", json={"older_than_days": 30})
        assert pruned.json()["deleted"] == STORED
        scrapes.append(parse_metrics((await client.get("/metrics")).text))
        _never_back(scrapes[-2], scrapes[-1])
        before_restart = scrapes[-1]

    async with running_service(settings) as svc, in_process_client(settings, svc) as client:
        after = parse_metrics((await client.get("/metrics")).text)
        _never_back(before_restart, after)
        rising = {k: v for k, v in before_restart.items() if k[0].endswith(RISING)}
        assert rising == {k: v for k, v in after.items() if k[0].endswith(RISING)}  # exactly, sums included
        await wait_run(client, (await client.post("/api/runs", json={"agent": "e", "prompt": "again"})).json()["id"])
        again = parse_metrics((await client.get("/metrics")).text)
        _never_back(after, again)
        assert again[("agent_manager_run_duration_seconds_count", ())] == timed + 5


async def test_interrupted_runs_count_once_across_restart(settings: Settings) -> None:
    """A run a crashed process left running is counted as interrupted at the next start, once."""
    db = Database(settings.db_path)
    db.migrate()
    began = datetime.now(UTC) - timedelta(minutes=5)
    db.execute("INSERT INTO runs (id, agent_id, agent_name, prompt, status, backend, created_at, started_at)"
               " VALUES ('run_crashed', 'agent_x', 'x', 'p', 'running', 'local', ?, ?)", (_stamp(began), _stamp(began)))
    db.execute("INSERT INTO run_events (run_id, seq, type, data, created_at)"
               " VALUES ('run_crashed', 1, 'output', '{}', ?)", (_stamp(began + timedelta(seconds=42)),))
    db.close()
    interrupted = ("agent_manager_runs_total", (("backend", "local"), ("status", "interrupted")))
    for _ in range(2):
        async with running_service(settings) as svc, in_process_client(settings, svc) as client:
            metrics = parse_metrics((await client.get("/metrics")).text)
            assert metrics[interrupted] == 1
            assert metrics[("agent_manager_run_duration_seconds_sum", ())] == 42  # until it was last heard of
            assert metrics[("agent_manager_run_duration_seconds_bucket", (("le", "30"),))] == 0
            assert metrics[("agent_manager_run_duration_seconds_bucket", (("le", "60"),))] == 1


async def test_create_latency_memory_is_bounded(settings: Settings) -> None:
    executor = DaytonaExecutor(settings, "metrics-test")
    assert executor.create_seconds is not None
    executor.create_seconds.observe(1.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            executor.create_seconds.observe(i % 400 / 3)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16_384, f"100,000 observations kept {grown} bytes"
    samples = {s.name + s.labels.get("le", ""): s.value for m in executor.create_seconds.collect() for s in m.samples}
    assert samples["agent_manager_sandbox_create_seconds_count"] == 100_001
    assert samples["agent_manager_sandbox_create_seconds_bucket+Inf"] == 100_001


async def test_metrics_need_auth(settings: Settings, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(transport=client._transport, base_url="http://127.0.0.1") as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
