"""Load at test-suite size: 200 concurrent short runs, each followed live by 2 of 50 SSE
listeners, while /api/health is polled. Every listener must get every event of its runs exactly
once, in order, ending with run.finished. Health latency is measured and reported (written to
``load-result.json`` in the test's tmp dir and printed), not asserted, except when grossly off."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).parent.parent / "bench" / "load.py"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_200_runs_50_listeners_every_event_exactly_once(tmp_path: Path) -> None:
    bench = _bench()
    proc, url, token = bench.start_server(tmp_path / "home", {"AGENT_MANAGER_MAX_CONCURRENT_RUNS": "8"})
    try:
        result = asyncio.run(bench.load(url, {"Authorization": f"Bearer {token}"}, runs=200, listeners=50,
                                        follow=2))
    finally:
        proc.terminate()
        proc.wait(30)
    (tmp_path / "load-result.json").write_text(json.dumps(result, indent=2))
    print("LOAD RESULT", json.dumps(result))
    assert result["error_count"] == 0, result["errors"]
    assert result["run_statuses"] == {"succeeded": 200}
    assert result["subscriptions"] == 400
    assert result["events_delivered"] >= 400 * 4  # queued, started, output, finished at least
    assert not result["health"]["errors"]
    assert result["health"]["samples"] > 0
    # timing is reported, not judged, on a shared machine; only a gross stall fails the test
    assert result["health"]["p50_ms"] < 2000, result["health"]


def test_delivery_checker_catches_gaps_and_repeats() -> None:
    check = _bench().check_delivery
    stored = [{"seq": i, "type": t} for i, t in enumerate(["run.queued", "output", "run.finished"], 1)]
    good = [(1, "run.queued"), (2, "output"), (3, "run.finished")]
    assert check(good, stored) is None
    assert check([(1, "run.queued"), (3, "run.finished")], stored) is not None
    assert check([(1, "run.queued"), (2, "output"), (2, "output"), (3, "run.finished")], stored) is not None
    assert check(good[:2], stored) is not None
    assert check([(2, "output"), (1, "run.queued"), (3, "run.finished")], stored) is not None
