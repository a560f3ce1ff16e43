"""Benchmark of the orchestration engine; prints JSON.

1. A random layered DAG of 200 steps, each a generic agent running `sleep <d>` with a known
   duration, run by the real engine + RunManager + local executor with unlimited parallelism.
   Reported: makespan ÷ critical-path length, and makespan ÷ that of `make -j` running the
   same DAG (a generated Makefile with the same sleeps) — the baseline.
2. 1,000 no-op `write_file` steps (independent, then a chain) to give the engine's own
   overhead per step (scheduling, persistence of every state change, events).

Usage: .venv/bin/python bench/dag.py [--steps 200] [--layers 10] [--seed 1] [--min 0.5] [--max 2.0]
Goals: makespan ≤ 1.05 × critical path and ≤ 1.03 × make's; ≤ 2 ms engine overhead per step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from agent_manager.orchestration import plan as plans
from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.store import agents as agent_store


def layered_dag(steps: int, layers: int, rng: random.Random, low: float, high: float) -> dict[str, Any]:
    """Steps spread over layers; each non-root step depends on 1–3 steps of earlier layers
    (mostly the previous one), so the DAG is wide, deep and irregular."""
    per_layer = [steps // layers + (1 if i < steps % layers else 0) for i in range(layers)]
    rows: list[list[str]] = []
    out: list[dict[str, Any]] = []
    for layer, count in enumerate(per_layer):
        row = []
        for i in range(count):
            step_id = f"l{layer}-{i}"
            duration = round(rng.uniform(low, high), 3)
            deps: set[str] = set()
            if layer:
                deps.update(rng.sample(rows[-1], min(len(rows[-1]), rng.randint(1, 2))))
                if layer > 1 and rng.random() < 0.5:
                    deps.add(rng.choice(rows[rng.randrange(layer - 1)]))
            out.append({"id": step_id, "agent": "sleeper", "prompt": f"{duration}", "depends_on": sorted(deps)})
            row.append(step_id)
        rows.append(row)
    return {"name": "bench", "max_parallel": 1024, "steps": out}


def critical_path(data: dict[str, Any]) -> float:
    plan = plans.load(data)
    finish: dict[str, float] = {}
    for step_id in plans.topological_order(plan):
        step = plan.step(step_id)
        finish[step_id] = float(step.prompt or 0) + max((finish[d] for d in step.depends_on), default=0.0)
    return max(finish.values())


def make_baseline(data: dict[str, Any], workdir: Path) -> float:
    lines = [".PHONY: all " + " ".join(s["id"] for s in data["steps"]),
             "all: " + " ".join(s["id"] for s in data["steps"])]
    for step in data["steps"]:
        lines += [f"{step['id']}: {' '.join(step['depends_on'])}", f"\t@sleep {step['prompt']}"]
    makefile = workdir / "Makefile"
    makefile.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    subprocess.run(["make", "-s", "-j", "-f", str(makefile)], check=True, cwd=workdir)
    return time.monotonic() - started


async def run_engine(svc: Service, data: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    engine = svc.orchestrations
    plan = plans.load(data, agent_store.list_all(svc.database))
    started = time.monotonic()
    view = engine.create(plan)
    final = await engine.wait(view["id"])
    return time.monotonic() - started, final


def noop_plan(count: int, chain: bool) -> dict[str, Any]:
    return {"name": "noop", "max_parallel": 1024, "steps": [
        {"id": f"n{i}", "action": "write_file", "path": f"n/{i}.txt", "content": "",
         "depends_on": [f"n{i - 1}"] if chain and i else []} for i in range(count)]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="am-bench-"))
    settings = Settings(home=home, max_concurrent_runs=1024, orchestration_max_parallel=256)
    svc = Service(settings)
    await svc.start()
    try:
        agent_store.create(svc.database, {"name": "sleeper", "kind": "generic", "command": "sleep",
                                          "args": ["{prompt}"]})
        data = layered_dag(args.steps, args.layers, rng, args.min, args.max)
        cp = critical_path(data)
        makespan, final = await run_engine(svc, data)
        assert final["status"] == "succeeded", final["error"]
        make_s = make_baseline(data, home)
        noop: dict[str, Any] = {}
        for chain in (False, True):
            plan = noop_plan(args.noop, chain)
            await run_engine(svc, noop_plan(20, chain))  # warm-up
            elapsed, done = await run_engine(svc, plan)
            assert done["status"] == "succeeded"
            noop["chain" if chain else "independent"] = {
                "steps": args.noop, "total_s": round(elapsed, 3), "per_step_ms": round(elapsed / args.noop * 1000, 3)}
        depth = len(plans.layers(plans.load(data)))
        worst_noop = max(v["per_step_ms"] for v in noop.values())
        return {
            "benchmark": "orchestration DAG",
            "parameters": {"steps": args.steps, "layers": args.layers, "seed": args.seed,
                           "sleep_s": [args.min, args.max], "deps": "1-2 from the previous layer, 50% one more "
                           "from an earlier layer", "max_parallel": 1024, "max_concurrent_runs": 1024,
                           "backend": "local", "agent": "generic `sleep <d>`", "cpus": os.cpu_count(),
                           "make": shutil.which("make")},
            "dag": {"depth_layers": depth, "total_sleep_s": round(sum(float(s["prompt"]) for s in data["steps"]), 3)},
            "critical_path_s": round(cp, 3),
            "engine_makespan_s": round(makespan, 3),
            "make_j_makespan_s": round(make_s, 3),
            "makespan_over_critical_path": round(makespan / cp, 4),
            "makespan_over_make": round(makespan / make_s, 4),
            "make_over_critical_path": round(make_s / cp, 4),
            "per_hop_overhead_ms": round((makespan - cp) / depth * 1000, 1),
            "noop_write_file_steps": noop,
            "goals": {"makespan_le_1.05_cp": makespan <= 1.05 * cp, "makespan_le_1.03_make": makespan <= 1.03 * make_s,
                      "overhead_le_2ms_per_step": worst_noop <= 2.0},
        }
    finally:
        await svc.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min", type=float, default=0.5)
    parser.add_argument("--max", type=float, default=2.0)
    parser.add_argument("--noop", type=int, default=1000)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
