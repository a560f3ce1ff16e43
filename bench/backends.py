"""Backend start latency benchmark; prints JSON.

Start-to-first-output (from ``executor.start(spec)`` to the first output chunk) of a trivial
command on every backend, using the executors directly: local, sandbox (bubblewrap, network
off; and on, through slirp4netns, when available), Daytona cold and Daytona from the warm pool
(against the Daytona emulator of tests/fakes, started in this process). Plus a burst of
parallel sandbox runs. See bench/README.md.

Usage: ``.venv/bin/python bench/backends.py [--reps 20] [--daytona-reps 10] [--parallel 50]
[--daytona-create-delay 1.0]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from agent_manager.executors.base import ExecSpec, Executor
from agent_manager.executors.daytona import DaytonaExecutor
from agent_manager.executors.local import LocalExecutor
from agent_manager.executors.sandbox import SandboxExecutor
from agent_manager.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.daytona_emulator import DaytonaEmulator  # noqa: E402

GOALS = {"sandbox_overhead_ms": 10.0, "warm_pool_speedup": 5.0, "parallel_sandbox_errors": 0}
ARGV = ["/bin/echo", "hi"]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0, "p50_ms": float("nan"), "p90_ms": float("nan")}
    return {"n": len(samples), "p50_ms": round(pct(samples, 50), 2), "p90_ms": round(pct(samples, 90), 2),
            "min_ms": round(min(samples), 2), "max_ms": round(max(samples), 2)}


async def first_output(executor: Executor, spec: ExecSpec) -> tuple[float, str, int]:
    """(ms from start() to the first chunk, all output, exit code); the run is awaited to its end."""
    started = time.perf_counter()
    execution = await executor.start(spec)
    first = None
    text = ""
    async for chunk in execution.output():
        if first is None:
            first = (time.perf_counter() - started) * 1000
        text += chunk.text
    code = await execution.wait()
    return first if first is not None else float("nan"), text, code


class Series:
    """Samples and failures of one case."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.bad: list[str] = []

    async def once(self, executor: Executor, spec: ExecSpec) -> None:
        try:
            ms, text, code = await first_output(executor, spec)
        except Exception as exc:
            self.bad.append(f"{type(exc).__name__}: {exc}")
            return
        if code != 0 or text.strip() != "hi":
            self.bad.append(f"exit {code}, output {text[:200]!r}")
        self.samples.append(ms)

    def result(self) -> dict[str, Any]:
        return {**summary(self.samples), "errors": len(self.bad), "error_samples": self.bad[:3]}


async def interleaved(cases: dict[str, tuple[Executor, ExecSpec]], reps: int,
                      before: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """One repetition of every case per round, so a busy moment of the machine hits all
    cases alike and the comparison between them stays fair."""
    series = {name: Series() for name in cases}
    for _ in range(reps):
        for name, (executor, spec) in cases.items():
            if before and name in before:
                await before[name]()
            await series[name].once(executor, spec)
    return {name: s.result() for name, s in series.items()}


async def parallel_sandbox(executor: SandboxExecutor, count: int) -> dict[str, Any]:
    errors: list[str] = []
    codes: Counter[int] = Counter()

    async def one() -> None:
        try:
            _, text, code = await first_output(executor, ExecSpec(argv=ARGV, network=False))
            codes[code] += 1
            if code != 0 or text.strip() != "hi":
                errors.append(f"exit {code}, output {text[:200]!r}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    wall = time.perf_counter() - started
    return {"runs": count, "wall_s": round(wall, 3), "errors": len(errors), "error_samples": errors[:3],
            "exit_codes": {str(k): v for k, v in codes.items()}}


async def bench_daytona(tmp: Path, reps: int, delay: float) -> dict[str, Any]:
    """Cold (a sandbox created per run) vs warm pool, with the emulator's creation taking ``delay`` s."""
    emulator = DaytonaEmulator(tmp / f"daytona-{delay}")
    (tmp / f"daytona-{delay}").mkdir()
    await emulator.start()
    emulator.slow_creation(delay)

    def settings(pool: int) -> Settings:
        return Settings.model_validate({
            "home": tmp / "home", "daytona_api_key": emulator.api_key, "daytona_api_url": emulator.api_url,
            "daytona_target": "us", "daytona_create_timeout_s": 60, "kill_grace_s": 0.2, "daytona_warm_pool": pool})
    cold = DaytonaExecutor(settings(0), "bench-cold", retry_base_s=0.05)
    warm = DaytonaExecutor(settings(1), "bench-warm", retry_base_s=0.05)
    spec = ExecSpec(argv=ARGV, network=False)
    try:
        await interleaved({"cold": (cold, spec)}, 1)  # warm-up: SDK import, client, first connection
        found = await interleaved({"cold": (cold, spec), "warm_pool": (warm, spec)}, reps,
                                  before={"warm_pool": lambda: warm.warm(network=False)})
        cold_res, warm_res = found["cold"], found["warm_pool"]
    finally:
        await cold.close()
        await warm.close()
        leaked = sorted(emulator.sandboxes)
        await emulator.stop()
    return {"emulated_create_delay_s": delay, "cold": cold_res, "warm_pool": warm_res,
            "speedup_p50": round(cold_res["p50_ms"] / warm_res["p50_ms"], 2), "sandboxes_leaked": len(leaked)}


async def run_all(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    prefix = f"am-bench-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({"home": tmp / "home", "kill_grace_s": 0.3, "stream_close_grace_s": 0.5})
    local = LocalExecutor(settings, prefix)
    sandbox = SandboxExecutor(settings, prefix)
    results: dict[str, Any] = {}
    try:
        available = await sandbox.available()
        if not available.ok:
            raise SystemExit(f"sandbox backend unavailable: {available.reason}")
        cases: dict[str, tuple[Executor, ExecSpec]] = {
            "local": (local, ExecSpec(argv=ARGV)), "sandbox": (sandbox, ExecSpec(argv=ARGV, network=False))}
        await interleaved(cases, 3)  # warm-up (page cache, first fork)
        results.update(await interleaved(cases, args.reps))
        # Measured on its own: the kernel tears a network namespace down lazily, and a namespace
        # created while the previous one is still being destroyed waits for it, so interleaving
        # network runs with the others would charge that wait to whichever run comes next.
        if sandbox.slirp4netns is not None:
            network = {"sandbox_network": (sandbox, ExecSpec(argv=ARGV, network=True))}
            results.update(await interleaved(network, args.reps))
        else:
            results["sandbox_network"] = {"skipped": "slirp4netns missing"}
        results["sandbox_parallel"] = await parallel_sandbox(sandbox, args.parallel)
    finally:
        await sandbox.close()
        await local.close()
    saved_cwd = os.getcwd()
    saved_env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("DAYTONA_")}
    clean = tmp / "clean-cwd"  # the SDK must not pick up a developer's .env
    clean.mkdir()
    os.chdir(clean)
    try:
        results["daytona"] = await bench_daytona(tmp, args.daytona_reps, args.daytona_create_delay)
        results["daytona_no_create_delay"] = await bench_daytona(tmp, args.daytona_reps, 0.0)
    finally:
        os.chdir(saved_cwd)
        os.environ.update(saved_env)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="repetitions for local and sandbox")
    parser.add_argument("--daytona-reps", type=int, default=10, help="repetitions for each Daytona case")
    parser.add_argument("--parallel", type=int, default=50, help="parallel sandbox runs")
    parser.add_argument("--daytona-create-delay", type=float, default=1.0,
                        help="seconds the emulator takes to bring a new sandbox to 'started'")
    args = parser.parse_args()
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    tmp = Path(tempfile.mkdtemp(prefix="am-bench-backends-"))
    try:
        results = asyncio.run(run_all(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    overhead = results["sandbox"]["p50_ms"] - results["local"]["p50_ms"]
    passed = {
        "sandbox_overhead_ms": overhead <= GOALS["sandbox_overhead_ms"] and results["sandbox"]["errors"] == 0,
        "warm_pool_speedup": results["daytona"]["speedup_p50"] >= GOALS["warm_pool_speedup"],
        "parallel_sandbox_errors": results["sandbox_parallel"]["errors"] == 0,
    }
    out = {
        "benchmark": "backends",
        "machine": {"nproc": os.cpu_count(), "loadavg_1m_before": load_before,
                    "loadavg_1m_after": round(os.getloadavg()[0], 2),
                    "python": sys.version.split()[0], "euid": os.geteuid(),
                    "bwrap": shutil.which("bwrap"), "slirp4netns": shutil.which("slirp4netns")},
        "parameters": {"command": ARGV, "reps": args.reps, "daytona_reps": args.daytona_reps,
                       "parallel_sandbox_runs": args.parallel,
                       "daytona_emulated_create_delay_s": args.daytona_create_delay,
                       "measured": "executor.start(spec) call to the first output chunk",
                       "daytona": "tests/fakes emulator in this process; warm pool refilled before each rep"},
        "goals": GOALS,
        "pass": passed,
        "all_pass": all(passed.values()),
        "sandbox_overhead_p50_ms": round(overhead, 2),
        **results,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
