"""Streaming benchmark against a real ``agent-manager serve`` process; prints JSON.

Three measurements in one run (see bench/README.md):

* latency from an agent's ``write()`` to the SSE client's receipt (per line, wall clock);
* end-to-end throughput of a large output (agent stdout → SQLite → SSE client), the server's
  RSS growth meanwhile, and the same bytes through a plain pipe as the baseline;
* many concurrent short runs (POST ×N at once, then follow each to its end).

Usage: ``.venv/bin/python bench/stream.py [--mb 200] [--lines 300] [--interval-ms 10] [--runs 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

GOALS = {"latency_p50_ms": 5.0, "latency_p99_ms": 50.0, "throughput_mb_s": 50.0,
         "rss_growth_mb": 100.0, "concurrent_errors": 0}
MB = 1_000_000

# The agents are tiny Python scripts; the prompt carries their parameters.
LATENCY_AGENT = """\
import os, sys, time
count, interval = sys.argv[1].split(",")[:2]
time.sleep(1.0)  # let the SSE client connect, so it measures live delivery, not replay
for i in range(int(count)):
    os.write(1, b"%d %d\\n" % (i, time.time_ns()))
    time.sleep(float(interval))
"""
WRITER_AGENT = """\
import os, sys
total = int(sys.argv[1])
block = (b"x" * 127 + b"\\n") * 512  # 64 KiB of plain ASCII lines
sent = 0
while sent < total:
    piece = block[: total - sent]
    sent += os.write(1, piece)
"""


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_server(home: Path, env: dict[str, str]) -> Server:
    """``agent-manager serve --port 0``; its output goes to a file so a full pipe never blocks it."""
    log = home.parent / "server.log"
    full_env = {**os.environ, "AGENT_MANAGER_HOME": str(home), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "serve", "--port", "0",
                                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        if match:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("server did not start")
    url = match.group(1)
    token = (home / "admin-token").read_text().strip()
    for _ in range(200):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return Server(url, token, proc, log)
        time.sleep(0.05)
    raise RuntimeError("server never became healthy")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, bytes, int]]:
    """(event type, raw data bytes, receipt time in ns) per frame; a byte-level parser so the
    client itself is not the bottleneck of the throughput figure. Linear in the bytes, and only
    single-byte searches (memchr): the data line is JSON, so it has no raw newline, and a read
    without one is only kept for later (``buf += piece`` and ``find(b"\\n\\n")`` were slower
    than the service on a 256 KiB frame)."""
    pending: list[bytes] = []
    async for piece in response.aiter_raw():
        received = time.time_ns()
        pending.append(piece)
        if piece.find(b"\n") < 0:
            continue
        buf = b"".join(pending) if len(pending) > 1 else piece
        frame_start = pos = 0
        event, data = "message", b""
        while (nl := buf.find(b"\n", pos)) >= 0:
            if nl == pos:  # an empty line ends the frame
                if buf[frame_start:frame_start + 1] != b":":
                    yield event, data, received
                event, data = "message", b""
                frame_start = pos = nl + 1
                continue
            if buf.startswith(b"data: ", pos):
                data = buf[pos + 6:nl]
            elif buf.startswith(b"event: ", pos):
                event = buf[pos + 7:nl].decode()
            pos = nl + 1
        rest = buf[frame_start:]
        pending = [rest] if rest else []


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class RssSampler:
    """Samples VmRSS of a pid every ``period`` seconds in a thread (peak and first value).
    ``children``: also its direct child processes (the Daytona worker), peak of theirs alone
    (``children_peak_kb``) and of the sum with the pid's own at the same moment (``total_peak_kb``),
    and, every ``PSS_EVERY``-th sample, the PSS of that sum (``total_pss_peak_kb``: shared library
    pages counted once between the two processes; RSS counts them in each)."""

    PSS_EVERY = 4  # smaps_rollup walks the page tables: not at every sample

    def __init__(self, pid: int, period: float = 0.01, children: bool = False) -> None:
        self.pid, self.period, self.children = pid, period, children
        self.peak_kb = self.children_peak_kb = self.total_peak_kb = self.total_pss_peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self, pid: int | None = None) -> dict[str, int]:
        fields = {}
        for line in Path(f"/proc/{pid or self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields

    def _children(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(c) for c in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        return []

    def _children_kb(self) -> int:
        total = 0
        for child in self._children():
            with contextlib.suppress(OSError, KeyError):
                total += self.read(child)["VmRSS"]
        return total

    @staticmethod
    def pss_kb(pid: int) -> int:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
        return 0

    def _loop(self) -> None:
        sample = 0
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                own = self.read()["VmRSS"]
                self.peak_kb = max(self.peak_kb, own)
                if self.children:
                    kids = self._children_kb()
                    self.children_peak_kb = max(self.children_peak_kb, kids)
                    self.total_peak_kb = max(self.total_peak_kb, own + kids)
                    if sample % self.PSS_EVERY == 0:
                        pss = self.pss_kb(self.pid)
                        for child in self._children():
                            with contextlib.suppress(OSError):
                                pss += self.pss_kb(child)
                        self.total_pss_peak_kb = max(self.total_pss_peak_kb, pss)
            sample += 1
            time.sleep(self.period)

    def __enter__(self) -> RssSampler:
        self.before = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = self.read()


async def create_agent(client: httpx.AsyncClient, name: str, command: str, args: list[str]) -> None:
    r = await client.post("/api/agents", json={"name": name, "kind": "generic", "command": command,
                                               "args": args, "backend": "local", "timeout_s": 600})
    r.raise_for_status()


async def submit(client: httpx.AsyncClient, agent: str, prompt: str) -> str:
    r = await client.post("/api/runs", json={"agent": agent, "prompt": prompt})
    r.raise_for_status()
    return str(r.json()["id"])


@contextlib.asynccontextmanager
async def follow(client: httpx.AsyncClient, run_id: str) -> AsyncIterator[AsyncIterator[tuple[str, bytes, int]]]:
    async with client.stream("GET", f"/api/runs/{run_id}/events?after=0",
                             headers={"Accept": "text/event-stream"}, timeout=None) as response:
        response.raise_for_status()
        yield sse_events(response)


async def bench_latency(client: httpx.AsyncClient, lines: int, interval_ms: float) -> dict[str, Any]:
    run_id = await submit(client, "bench-latency", f"{lines},{interval_ms / 1000}")
    latencies: list[float] = []
    status = None
    async with follow(client, run_id) as events:
        async for event, data, received in events:
            if event == "output":
                payload = json.loads(data)
                if payload["stream"] != "stdout":
                    continue
                for line in payload["text"].splitlines():
                    latencies.append((received - int(line.split()[1])) / 1e6)
            elif event == "run.finished":
                status = json.loads(data)["status"]
                break
    return {"run_status": status, "lines_sent": lines, "lines_received": len(latencies),
            "p50_ms": round(pct(latencies, 50), 3), "p90_ms": round(pct(latencies, 90), 3),
            "p99_ms": round(pct(latencies, 99), 3), "max_ms": round(max(latencies, default=float("nan")), 3)}


async def bench_throughput(client: httpx.AsyncClient, server: Server, total: int) -> dict[str, Any]:
    received = 0
    status = None
    with RssSampler(server.proc.pid) as rss:
        started = time.perf_counter()
        run_id = await submit(client, "bench-writer", str(total))
        async with follow(client, run_id) as events:
            async for event, data, _ in events:
                if event == "output":
                    payload = json.loads(data)
                    if payload["stream"] == "stdout":
                        received += len(payload["text"])
                elif event == "run.finished":
                    status = json.loads(data)["status"]
                    break
        elapsed = time.perf_counter() - started
    return {"run_status": status, "bytes_sent": total, "bytes_received": received,
            "seconds": round(elapsed, 3), "mb_s": round(total / MB / elapsed, 1),
            "server_rss_before_mb": round(rss.before["VmRSS"] / 1024, 1),
            "server_rss_peak_mb": round(rss.peak_kb / 1024, 1),
            "server_rss_growth_mb": round((rss.peak_kb - rss.before["VmRSS"]) / 1024, 1),
            "server_vmhwm_before_mb": round(rss.before["VmHWM"] / 1024, 1),
            "server_vmhwm_after_mb": round(rss.after["VmHWM"] / 1024, 1)}


def pipe_baseline(writer: Path, total: int, into: Path | None = None) -> dict[str, Any]:
    """The same writer read through a plain pipe by this process: the ceiling of the host.
    ``into``: each piece is also written to this file (then removed), on the data directory's
    disk: what the service does at the least (it stores every byte before anyone sees it)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(writer), str(total)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = None if into is None else os.open(into, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    got = 0
    try:
        while chunk := os.read(fd, 65536):
            got += len(chunk)
            if out is not None:
                os.write(out, chunk)
    finally:
        if out is not None:
            os.close(out)
    proc.wait()
    elapsed = time.perf_counter() - started
    if into is not None:
        into.unlink()
    return {"bytes": got, "seconds": round(elapsed, 3), "mb_s": round(total / MB / elapsed, 1)}


async def bench_concurrent(server: Server, count: int, per_client: int = 10) -> dict[str, Any]:
    """POST ``count`` runs at once, each followed over its own SSE stream to ``run.finished``.

    The runs are spread over several small clients: one httpx pool with hundreds of
    connections spends its time in its own bookkeeping (O(connections) per request), which
    would make this measure the client rather than the service."""
    errors: list[str] = []
    statuses: Counter[str] = Counter()
    clients = [httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=httpx.Timeout(60.0),
                                 limits=httpx.Limits(max_connections=2 * per_client))
               for _ in range(-(-count // per_client))]

    async def one(i: int) -> None:
        client = clients[i // per_client]
        try:
            run_id = await submit(client, "bench-echo", f"hello {i}")
        except Exception as exc:
            errors.append(f"submit: {type(exc).__name__}: {exc}")
            return
        try:
            async with follow(client, run_id) as events:
                async for event, data, _ in events:
                    if event == "run.finished":
                        statuses[json.loads(data)["status"]] += 1
                        return
            errors.append(f"{run_id}: stream ended without run.finished")
        except Exception as exc:
            errors.append(f"follow {run_id}: {type(exc).__name__}: {exc}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    not_succeeded = count - statuses.get("succeeded", 0)
    return {"runs": count, "errors": len(errors), "not_succeeded": not_succeeded, "error_samples": errors[:5],
            "statuses": dict(statuses), "wall_s": round(elapsed, 3), "runs_per_s": round(count / elapsed, 1),
            "clients": len(clients)}


async def run_all(args: argparse.Namespace, server: Server, scripts: Path) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                 timeout=httpx.Timeout(60.0)) as client:
        await create_agent(client, "bench-latency", sys.executable, ["-u", str(scripts / "latency.py"), "{prompt}"])
        await create_agent(client, "bench-writer", sys.executable, [str(scripts / "writer.py"), "{prompt}"])
        await create_agent(client, "bench-echo", "/bin/echo", ["{prompt}"])
        await bench_latency(client, 20, 0.01)  # warm-up: imports, first connection, SQLite pages
        latency = await bench_latency(client, args.lines, args.interval_ms)
        throughput = await bench_throughput(client, server, args.mb * MB)
        throughput["pipe_baseline"] = pipe_baseline(scripts / "writer.py", args.mb * MB)
        concurrent = await bench_concurrent(server, args.runs)
    return {"latency": latency, "throughput": throughput, "concurrent": concurrent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB (10^6 bytes) written for the throughput run")
    parser.add_argument("--lines", type=int, default=300, help="lines written for the latency run")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="pause between latency lines")
    parser.add_argument("--runs", type=int, default=200, help="concurrent short runs")
    parser.add_argument("--max-concurrent-runs", type=int, default=8,
                        help="AGENT_MANAGER_MAX_CONCURRENT_RUNS of the server (its default is 8)")
    args = parser.parse_args()
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    tmp = Path(tempfile.mkdtemp(prefix="am-bench-stream-"))
    scripts = tmp / "scripts"
    scripts.mkdir()
    (scripts / "latency.py").write_text(LATENCY_AGENT)
    (scripts / "writer.py").write_text(WRITER_AGENT)
    # The throughput case counts every byte of a --mb output: no per-run storage cap here.
    server = start_server(tmp / "home", {"AGENT_MANAGER_MAX_CONCURRENT_RUNS": str(args.max_concurrent_runs),
                                         "AGENT_MANAGER_MAX_STORED_OUTPUT_MB": "0"})
    try:
        results = asyncio.run(run_all(args, server, scripts))
    finally:
        stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)
    lat, thr, conc = results["latency"], results["throughput"], results["concurrent"]
    passed = {
        "latency_p50_ms": lat["p50_ms"] <= GOALS["latency_p50_ms"],
        "latency_p99_ms": lat["p99_ms"] <= GOALS["latency_p99_ms"],
        "throughput_mb_s": thr["mb_s"] >= GOALS["throughput_mb_s"] and thr["bytes_received"] == thr["bytes_sent"],
        "rss_growth_mb": thr["server_rss_growth_mb"] <= GOALS["rss_growth_mb"],
        "concurrent_errors": conc["errors"] == 0 and conc["not_succeeded"] == 0,
    }
    out = {
        "benchmark": "stream",
        "machine": {"nproc": os.cpu_count(), "loadavg_1m_before": load_before,
                    "loadavg_1m_after": round(os.getloadavg()[0], 2),
                    "python": sys.version.split()[0], "platform": sys.platform},
        "parameters": {"latency_lines": args.lines, "latency_interval_ms": args.interval_ms,
                       "throughput_mb": args.mb, "concurrent_runs": args.runs,
                       "server_max_concurrent_runs": args.max_concurrent_runs,
                       "server": "agent-manager serve --port 0 (real process, temp home)",
                       "agents": "generic, local backend"},
        "goals": GOALS,
        "pass": passed,
        "all_pass": all(passed.values()),
        **results,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
