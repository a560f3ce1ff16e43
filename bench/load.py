"""Load: many short runs at once, each followed live by SSE listeners, while /api/health is polled.

Prints JSON: /api/health latency percentiles under load, events delivered per second, run
throughput, and every delivery error (a listener that missed, repeated or reordered an event,
or a stream that did not end with ``run.finished``).

    .venv/bin/python bench/load.py --runs 1000 --listeners 200 --follow 2

Starts its own ``agent-manager serve --port 0`` in a temporary data directory unless
``--url`` and ``--token`` name a running one. ``tests/test_load.py`` runs a small version.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

AGENT = {"name": "load-echo", "command": "echo", "args": ["{prompt}"]}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _follow(client: httpx.AsyncClient, run_id: str) -> list[tuple[int, str]]:
    """One SSE subscription from the start: (seq, type) in the order received."""
    got: list[tuple[int, str]] = []
    async with client.stream("GET", f"/api/runs/{run_id}/events", headers={"Accept": "text/event-stream"}) as r:
        r.raise_for_status()
        seq, event = 0, ""
        async for line in r.aiter_lines():
            if line.startswith("id:"):
                seq = int(line[3:])
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                got.append((seq, event))
    return got


def check_delivery(got: list[tuple[int, str]], stored: list[dict[str, Any]]) -> str | None:
    """None when ``got`` is exactly the stored log: seq 1..N, each once, ending with run.finished."""
    seqs = [s for s, _ in got]
    if seqs != list(range(1, len(seqs) + 1)):
        return f"seqs not gapless/unique/ordered: {seqs[:20]}"
    if not got or got[-1][1] != "run.finished":
        return f"did not end with run.finished: {got[-3:]}"
    if [(e["seq"], e["type"]) for e in stored] != got:
        return f"differs from the stored log ({len(got)} received, {len(stored)} stored)"
    return None


async def load(url: str, headers: dict[str, str], runs: int, listeners: int, follow: int,
               health_interval: float = 0.05) -> dict[str, Any]:
    """Submit ``runs`` runs at once; ``listeners`` listeners share them so that each run is
    followed by ``follow`` distinct listeners."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    timeout = httpx.Timeout(120, connect=30)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as client:
        r = await client.post("/api/agents", json=AGENT)
        if r.status_code not in (201, 409):
            raise RuntimeError(f"cannot create the agent: {r.text}")
        latencies: list[float] = []
        health_errors: list[str] = []
        done = asyncio.Event()

        async def poll_health() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
                while not done.is_set():
                    started = time.perf_counter()
                    try:
                        ok = (await probe.get("/api/health")).status_code == 200
                    except httpx.HTTPError as exc:
                        ok = False
                        health_errors.append(repr(exc))
                    latencies.append(time.perf_counter() - started)
                    if not ok:
                        health_errors.append("non-200")
                    await asyncio.sleep(health_interval)

        poller = asyncio.create_task(poll_health())
        began = time.perf_counter()

        async def one(i: int) -> list[tuple[int, str, list[tuple[int, str]] | BaseException]]:
            """Submit run i, then follow it at once (live, not replayed) from ``follow`` listeners."""
            resp = await client.post("/api/runs", json={"agent": AGENT["name"], "prompt": f"load {i}"})
            resp.raise_for_status()
            run_id = str(resp.json()["id"])
            who = [(i + k) % listeners for k in range(follow)]
            got = await asyncio.gather(*(_follow(client, run_id) for _ in who), return_exceptions=True)
            return [(listener, run_id, g) for listener, g in zip(who, got, strict=True)]

        per_run = await asyncio.gather(*(one(i) for i in range(runs)), return_exceptions=True)
        subscriptions: list[tuple[int, str, list[tuple[int, str]] | BaseException]] = []
        submit_errors = [repr(x) for x in per_run if isinstance(x, BaseException)]
        for item in per_run:
            if not isinstance(item, BaseException):
                subscriptions.extend(item)
        run_ids = sorted({run_id for _, run_id, _ in subscriptions})
        elapsed = time.perf_counter() - began
        done.set()
        await poller
        errors: list[str] = list(submit_errors)
        events = 0
        stored_cache: dict[str, list[dict[str, Any]]] = {}
        for listener, run_id, got in subscriptions:
            if isinstance(got, BaseException):
                errors.append(f"listener {listener} run {run_id}: {got!r}")
                continue
            if run_id not in stored_cache:
                stored_cache[run_id] = (await client.get(f"/api/runs/{run_id}/events")).json()
            problem = check_delivery(got, stored_cache[run_id])
            if problem:
                errors.append(f"listener {listener} run {run_id}: {problem}")
            events += len(got)
        statuses: dict[str, int] = {}
        for run_id in run_ids:
            status = (await client.get(f"/api/runs/{run_id}")).json()["status"]
            statuses[status] = statuses.get(status, 0) + 1
    ms = [v * 1000 for v in latencies]
    return {
        "runs": runs, "listeners": listeners, "follow": follow, "subscriptions": len(subscriptions),
        "elapsed_s": round(elapsed, 3), "run_statuses": statuses,
        "events_delivered": events, "events_per_s": round(events / elapsed, 1) if elapsed else 0,
        "runs_per_s": round(runs / elapsed, 1) if elapsed else 0,
        "health": {"samples": len(ms), "p50_ms": round(percentile(ms, 0.5), 1),
                   "p90_ms": round(percentile(ms, 0.9), 1), "p99_ms": round(percentile(ms, 0.99), 1),
                   "max_ms": round(max(ms), 1) if ms else 0.0,
                   "mean_ms": round(statistics.fmean(ms), 1) if ms else 0.0,
                   "over_200ms": sum(1 for v in ms if v > 200), "errors": health_errors[:20]},
        "errors": errors[:50], "error_count": len(errors),
    }


def start_server(home: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(home), **extra_env}
    proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "serve", "--port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    url = None
    for line in proc.stdout:
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        raise RuntimeError("the server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    for _ in range(200):
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc, url, (home / "admin-token").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument("--follow", type=int, default=2, help="listeners per run")
    parser.add_argument("--max-concurrent-runs", type=int, default=16)
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, token = args.url, args.token or ""
        else:
            proc, url, token = start_server(Path(tmp) / "home",
                                            {"AGENT_MANAGER_MAX_CONCURRENT_RUNS": str(args.max_concurrent_runs)})
        try:
            result = asyncio.run(load(url, {"Authorization": f"Bearer {token}"}, args.runs, args.listeners,
                                      args.follow))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    result["cpus"] = os.cpu_count()
    result["max_concurrent_runs"] = args.max_concurrent_runs
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
