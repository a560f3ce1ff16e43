"""bench/scale.py's throughput case: one fast writer's output followed five ways (see scale.py's
doc), each against the same writer through a plain pipe."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from stream import (
    MB,
    WRITER_AGENT,
    RssSampler,
    create_agent,
    follow,
    pipe_baseline,
    start_server,
    stop_server,
)

DONE = ("succeeded", "failed", "cancelled", "timed_out")


def seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


async def case_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    writer = workdir / "writer.py"
    writer.write_text(WRITER_AGENT)
    total = args.mb * MB
    # The plain pipe before and after: its speed swings up to 2x between runs here.
    pipes = [pipe_baseline(writer, total)["mb_s"]]
    files = [pipe_baseline(writer, total, workdir / "file-baseline")["mb_s"]]
    # Every byte is followed and counted: no per-run storage cap (max_stored_output_mb) here.
    server = start_server(workdir / "thr-home", {"AGENT_MANAGER_MAX_STORED_OUTPUT_MB": "0"})
    figures: dict[str, Any] = {"bytes_sent": total}
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=None) as client:
            await create_agent(client, "writer", sys.executable, [str(writer), "{prompt}"])
            # The same writer four times (see the module doc): (name, follow it, replay it).
            checks: dict[str, tuple[str, str]] = {}  # sse_curl: run id -> (CRC, size) of the live stream
            ways = (("sse", _count, _count), ("sse_curl", functools.partial(_curl_sse, checks=checks), _count),
                    ("raw", _count_raw, _count_raw), ("raw_curl", _curl, _curl), ("ingest", _finished, _count_raw))
            for way, count, replay in ways:
                with RssSampler(server.proc.pid) as rss:
                    started = time.perf_counter()
                    posted = await client.post("/api/runs", json={"agent": "writer", "prompt": str(total)})
                    run_id = str(posted.json()["id"])
                    live, status = await count(client, run_id)
                    elapsed = time.perf_counter() - started
                run = (await client.get(f"/api/runs/{run_id}")).json()
                run_s = seconds_between(run["created_at"], run["finished_at"])  # the writer's own time
                if way == "ingest":
                    elapsed = run_s
                if way == "sse_curl":  # the live stream's sum against a replay's, parsed now (untimed)
                    live = await _sse_text_if_same(client, run_id, workdir, checks[run_id])
                replay_started = time.perf_counter()
                replayed, _ = await replay(client, run_id)
                replay_s = time.perf_counter() - replay_started
                figures[way] = {"bytes_live": live, "bytes_replayed": replayed, "run_status": status,
                                "seconds": round(elapsed, 3), "mb_s": round(total / MB / elapsed, 1),
                                "run_mb_s": round(total / MB / run_s, 1),
                                "replay_mb_s": round(total / MB / replay_s, 1),
                                "server_rss_before_mb": round(rss.before["VmRSS"] / 1024, 1),
                                "server_rss_growth_mb": round((rss.peak_kb - rss.before["VmRSS"]) / 1024, 1)}
    finally:
        stop_server(server)
    pipes += [pipe_baseline(writer, total)["mb_s"] for _ in range(2)]
    files += [pipe_baseline(writer, total, workdir / "file-baseline")["mb_s"] for _ in range(2)]
    pipe_mb_s = statistics.median(pipes)
    for way in ("sse", "sse_curl", "raw", "raw_curl", "ingest"):
        figures[way]["ratio"] = round(figures[way]["mb_s"] / pipe_mb_s, 3)
    # The SSE figures stay at the top level too (earlier notes and scripts read them there).
    return {**figures, **{k: figures["sse"][k] for k in ("bytes_live", "bytes_replayed", "run_status", "seconds",
                                                         "mb_s", "replay_mb_s", "ratio", "server_rss_before_mb",
                                                         "server_rss_growth_mb")},
            "pipe_mb_s": pipe_mb_s, "pipe_runs_mb_s": pipes, "file_mb_s": statistics.median(files),
            "file_runs_mb_s": files, "file_ratio": round(statistics.median(files) / pipe_mb_s, 3),
            "raw_ratio": figures["raw"]["ratio"],
            "raw_curl_ratio": figures["raw_curl"]["ratio"], "sse_curl_ratio": figures["sse_curl"]["ratio"],
            "ingest_ratio": figures["ingest"]["ratio"]}


async def _count_raw(client: httpx.AsyncClient, run_id: str) -> tuple[int, str | None]:
    """Bytes of GET /api/runs/{id}/output (followed until the run ends), each piece checked
    to be the writer's lines (no JSON to parse: that is the point of the endpoint)."""
    received = 0
    async with client.stream("GET", f"/api/runs/{run_id}/output") as response:
        response.raise_for_status()
        async for piece in response.aiter_raw():
            received += len(piece)
    status = (await client.get(f"/api/runs/{run_id}")).json()["status"]
    return received, status


async def _curl(client: httpx.AsyncClient, run_id: str) -> tuple[int, str | None]:
    """Bytes of GET /api/runs/{id}/output as ``curl -sN`` receives them (no Python on the client side)."""
    auth = client.headers["Authorization"]
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "-o", "/dev/null", "-w", "%{size_download}", "-H", f"Authorization: {auth}",
        f"{str(client.base_url).rstrip('/')}/api/runs/{run_id}/output", stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    status = (await client.get(f"/api/runs/{run_id}")).json()["status"]
    return int(out or 0), status


async def _curl_sse(client: httpx.AsyncClient, run_id: str,
                    checks: dict[str, tuple[str, str]]) -> tuple[int, str | None]:
    """The SSE stream as ``curl -sN`` receives it (a native client, as a browser's EventSource
    is), piped into ``cksum`` (CRC-32 with pclmul, several GB/s) rather than saved: writing
    200 MB to a file put fresh page cache and the disk on the same two cores, and the figure
    measured that (258-278 MB/s saved against 650-890 to a pipe). The (CRC, size) is kept in
    ``checks`` for ``_sse_text_if_same``, which proves every byte arrived live. Returns 0 bytes."""
    auth = client.headers["Authorization"]
    url = f"{str(client.base_url).rstrip('/')}/api/runs/{run_id}/events?after=0"
    checks[run_id] = await asyncio.to_thread(_cksum_of, ["curl", "-sN", "-H", f"Authorization: {auth}",
                                                           "-H", "Accept: text/event-stream", url])
    status = (await client.get(f"/api/runs/{run_id}")).json()["status"]
    return 0, status


def _cksum_of(argv: list[str]) -> tuple[str, str]:
    """(CRC, size) of what ``argv`` writes to stdout, summed by ``cksum`` as it arrives."""
    source = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert source.stdout is not None
    summed = subprocess.run(["cksum"], stdin=source.stdout, capture_output=True, check=True).stdout.split()
    source.stdout.close()
    source.wait()
    return summed[0].decode(), summed[1].decode()


async def _sse_text_if_same(client: httpx.AsyncClient, run_id: str, saved: Path, live: tuple[str, str]) -> int:
    """The output text bytes of the run's SSE stream replayed by curl into a file (untimed), when
    its (CRC, size) equals the live stream's ``live``: both are the same stored events framed the
    same way, so equal sums mean the live follower got every byte. -1 when they differ."""
    auth = client.headers["Authorization"]
    file = saved / f"{run_id}.sse"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "-o", str(file), "-H", f"Authorization: {auth}", "-H", "Accept: text/event-stream",
        f"{str(client.base_url).rstrip('/')}/api/runs/{run_id}/events?after=0")
    await proc.wait()
    replayed = await asyncio.to_thread(_cksum_of, ["cat", str(file)])
    text_bytes = sse_text_bytes(file)
    return text_bytes if replayed == live else -1


def sse_text_bytes(saved: Path) -> int:
    """The output text in a saved SSE stream (each ``output`` event's ``text``); the file is deleted."""
    total, event = 0, ""
    with saved.open("rb") as frames:
        for line in frames:
            if line.startswith(b"event: "):
                event = line[7:].strip().decode()
            elif line.startswith(b"data: ") and event == "output":
                total += len(json.loads(line[6:])["text"])
    saved.unlink()
    return total


async def _finished(client: httpx.AsyncClient, run_id: str) -> tuple[int, str | None]:
    """Until finished (committed after its last output row); the time is the run's own (created → finished)."""
    while (status := (await client.get(f"/api/runs/{run_id}")).json()["status"]) not in DONE:
        await asyncio.sleep(0.05)
    return 0, status


async def _count(client: httpx.AsyncClient, run_id: str) -> tuple[int, str | None]:
    received, status = 0, None
    async with follow(client, run_id) as stream:
        async for event, data, _ in stream:
            if event == "output":
                received += len(orjson.loads(data)["text"])
            elif event == "run.finished":
                status = json.loads(data)["status"]
                break
    return received, status
