"""Cancel latency of a run that has not started: queued behind a busy slot; prints JSON.

``max_concurrent_runs = 1``; a generic agent sleeps ``--busy-s`` seconds in the only slot and
a second run queues behind it; the figure is the time ``POST /api/runs/{id}/cancel`` of the
queued run takes to answer (it used to wait for the slot). In process (ASGI), real processes.

Usage: ``.venv/bin/python bench/cancel.py [--busy-s 4] [--reps 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web.app import create_app

GOAL_S = 0.5
SLEEPER = "import sys, time; time.sleep(float(sys.argv[1]))"


async def measure(busy_s: float, reps: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp) / "home", max_concurrent_runs=1, kill_grace_s=0.3)
        svc = Service(settings)
        await svc.start()
        try:
            app = create_app(settings, service=svc)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                         headers={"Authorization": f"Bearer {app.state.token}"}, timeout=120) as c:
                await c.post("/api/agents", json={"name": "sleep", "command": sys.executable,
                                                  "args": ["-c", SLEEPER, "{prompt}"]})
                times = []
                for _ in range(reps):
                    busy = (await c.post("/api/runs", json={"agent": "sleep", "prompt": str(busy_s)})).json()
                    while (await c.get(f"/api/runs/{busy['id']}")).json()["status"] != "running":
                        await asyncio.sleep(0.02)
                    queued = (await c.post("/api/runs", json={"agent": "sleep", "prompt": "1"})).json()
                    began = time.monotonic()
                    answer = await c.post(f"/api/runs/{queued['id']}/cancel")
                    times.append(time.monotonic() - began)
                    assert answer.json()["status"] == "cancelled", answer.text
                    await c.post(f"/api/runs/{busy['id']}/cancel")
                return times
        finally:
            await svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--busy-s", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    times = asyncio.run(measure(args.busy_s, args.reps))
    worst = max(times)
    print(json.dumps({"params": vars(args), "nproc": os.cpu_count(), "goals": {"cancel_queued_max_s": GOAL_S},
                      "cancel_queued_s": {"median": round(statistics.median(times), 4), "max": round(worst, 4)},
                      "pass": {"cancel_queued_max_s": worst <= GOAL_S}, "all_pass": worst <= GOAL_S}, indent=2))


if __name__ == "__main__":
    main()
