"""The API probe of bench/scale.py: its own process, so the listeners' parsing in the bench
process does not delay its timings. It alternates ``GET /api/health`` and ``GET /api/runs``.

    python bench/probe.py URL TOKEN STOP_FILE [INTERVAL_MS]      # prints one JSON document
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from stream import Server, pct


def probe_main(url: str, token: str, stop_file: str, interval_ms: str = "20") -> None:
    """Alternate GET /api/health and GET /api/runs, ``interval_ms`` apart (20 ms: about 65
    samples each in the api case, so its p99 is nearly its max; ``--probe-interval-ms`` takes
    more), until ``stop_file`` exists."""
    pause = float(interval_ms) / 1000
    samples: dict[str, list[float]] = {"health": [], "runs": []}
    when: list[tuple[float, float, str]] = []  # (seconds since the probe began, ms, endpoint)
    began = time.perf_counter()
    errors = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while not os.path.exists(stop_file):
            for name, path in (("health", "/api/health"), ("runs", "/api/runs?limit=50")):
                started = time.perf_counter()
                try:
                    ok = client.get(path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                samples[name].append((time.perf_counter() - started) * 1000)
                when.append((round(started - began, 2), round(samples[name][-1], 1), name))
                errors += not ok
                time.sleep(pause)
    print(json.dumps({"samples": samples, "errors": errors, "slowest": sorted(when, key=lambda w: -w[1])[:8]}))


class Probe:
    def __init__(self, server: Server, workdir: Path, interval_ms: float = 20.0) -> None:
        self.stop_file = workdir / f"probe-stop-{time.monotonic_ns()}"
        self.proc = subprocess.Popen([sys.executable, __file__, server.url, server.token,
                                      str(self.stop_file), str(interval_ms)], stdout=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, Any]:
        self.stop_file.write_text("stop")
        out, _ = self.proc.communicate(timeout=60)
        data = json.loads(out)
        result: dict[str, Any] = {"errors": data["errors"], "slowest_s_ms": data["slowest"]}
        for name, values in data["samples"].items():
            result[name] = {"samples": len(values), "p50_ms": round(pct(values, 50), 1),
                            "p99_ms": round(pct(values, 99), 1), "max_ms": round(max(values, default=0), 1)}
        return result


if __name__ == "__main__":
    probe_main(*sys.argv[1:5])
