"""What the product adds to the real agent CLIs' time to first answer text; prints JSON.

For each CLI installed in ``.cache/agent-clis`` (``scripts/install-agent-clis.sh``), pointed at
the model-API stub of tests/fakes/model_api.py (four chunks, 250 ms apart):

* **through the product**: a real ``agent-manager serve``, the CLI registered with the stub
  as its gateway, ``POST /api/runs``, an SSE client on the run's events. Figure: receipt of
  the first ``message`` event at the client − the stub's send time of its first chunk.
* **directly**: the same argv, environment and working directory, started by this script;
  its stdout read line by line through the kind's own parser. Figure: the first ``message``
  event's parse time − the stub's first chunk.

``overhead_ms`` = product − direct per iteration; the goal is p50 ≤ 50 ms per CLI. For CLIs
that only print finished text (codex, opencode) both figures include the rest of the answer;
the difference is still what the product adds.

Usage: ``.venv/bin/python bench/clis.py [--iterations 5] [--clis claude,gemini]``
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
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

from fakes.model_api import ModelStub  # noqa: E402
from stream import follow, pct, start_server, stop_server  # noqa: E402

from agent_manager.agents import get_kind  # noqa: E402
from agent_manager.agents.base import Gateway  # noqa: E402
from agent_manager.executors.process import base_environment  # noqa: E402

CLI_BIN = Path(os.environ.get("AGENT_CLIS_DIR", REPO / ".cache" / "agent-clis")) / "bin"
CLIS = ["claude", "codex", "gemini", "opencode", "aider"]
API_PATH = {"claude": "", "gemini": "", "codex": "/v1", "opencode": "/v1", "aider": "/v1"}
MODEL = {"codex": "gpt-5", "opencode": "stub-model", "aider": "stub-model"}
GOAL_MS = 50.0
PROMPT = "Say the answer."


def first_chunk(stub: ModelStub, since: int) -> float:
    """The first chunk of the *last* streamed answer: the one the CLI prints (opencode first
    streams a session title through the same endpoint)."""
    streamed = [e for e in stub.exchanges[since:] if e.mode == "answer" and e.chunk_times]
    if not streamed:
        raise RuntimeError("the CLI never asked the stub for a streamed answer")
    return streamed[-1].chunk_times[0]


async def through_product(client: httpx.AsyncClient, agent: str, stub: ModelStub) -> float:
    since = len(stub.exchanges)
    r = await client.post("/api/runs", json={"agent": agent, "prompt": PROMPT})
    r.raise_for_status()
    first: float | None = None
    status = None
    async with follow(client, r.json()["id"]) as events:
        async for event, data, received in events:
            if event == "message" and first is None:
                first = received / 1e9
            elif event == "run.finished":
                status = json.loads(data)["status"]
                break
    if status != "succeeded" or first is None:
        raise RuntimeError(f"{agent}: run {status}, first message {first}")
    return (first - first_chunk(stub, since)) * 1000


async def directly(cli: str, stub: ModelStub, env: dict[str, str], cwd: Path) -> float:
    kind = get_kind(cli)
    inv = kind.build("", [], PROMPT, MODEL.get(cli), None,
                     gateway=Gateway(stub.url + API_PATH[cli], "sk-bench"))
    argv = [shutil.which(inv.argv[0], path=env["PATH"]) or inv.argv[0], *inv.argv[1:]]
    since = len(stub.exchanges)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env={**env, **inv.env}, stdin=asyncio.subprocess.PIPE if inv.stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=1 << 24)
    assert proc.stdout is not None
    if inv.stdin is not None and proc.stdin is not None:
        proc.stdin.write(inv.stdin)
        await proc.stdin.drain()
        proc.stdin.close()
    parser = kind.parser()
    first: float | None = None
    while chunk := await proc.stdout.read(65536):
        events = parser.feed("stdout", chunk.decode(errors="replace"))
        if first is None and any(e.type == "message" for e in events):
            first = time.time()
    await proc.wait()
    if first is None:
        raise RuntimeError(f"{cli} (direct): no message, exit {proc.returncode}")
    return (first - first_chunk(stub, since)) * 1000


async def bench_cli(cli: str, iterations: int, stub: ModelStub, tmp: Path) -> dict[str, Any]:
    home = REPO / ".cache" / "real-cli-home" / f"bench-{uuid.uuid4().hex[:8]}"  # not under /tmp: see tests
    home.mkdir(parents=True)
    env = {"HOME": str(home), "PATH": f"{CLI_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = start_server(tmp / f"am-{cli}", env)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as client:
            body: dict[str, Any] = {"name": cli, "kind": cli, "api_base": stub.url + API_PATH[cli],
                                    "api_key": "sk-bench", "model": MODEL.get(cli)}
            created = await client.post("/api/agents", json=body)
            created.raise_for_status()
            workspace = tmp / f"am-{cli}" / "workspaces" / "agents" / created.json()["id"]  # workdirs.agent_workspace
            workspace.mkdir(parents=True, exist_ok=True)
            direct_env = base_environment({**os.environ, **env})
            await through_product(client, cli, stub)  # warm-up: first-run setup of the CLI
            await directly(cli, stub, direct_env, workspace)
            product, direct = [], []
            for _ in range(iterations):
                product.append(await through_product(client, cli, stub))
                direct.append(await directly(cli, stub, direct_env, workspace))
    finally:
        stop_server(server)
        shutil.rmtree(home, ignore_errors=True)
    overhead = [p - d for p, d in zip(product, direct, strict=True)]
    p50 = round(pct(overhead, 50), 1)
    return {"streams_answer": get_kind(cli).streams_answer,
            "product_first_message_ms": [round(v, 1) for v in product],
            "direct_first_message_ms": [round(v, 1) for v in direct],
            "overhead_p50_ms": p50, "overhead_max_ms": round(max(overhead), 1), "pass": p50 <= GOAL_MS}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--clis", default=",".join(CLIS))
    opts = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="am-bench-clis-") as tmp, ModelStub(delay=0.25) as stub:
        for cli in opts.clis.split(","):
            if not (CLI_BIN / cli).exists():
                results[cli] = {"skipped": f"not installed in {CLI_BIN} (scripts/install-agent-clis.sh)"}
                continue
            try:
                results[cli] = await bench_cli(cli, opts.iterations, stub, Path(tmp))
            except RuntimeError as exc:
                results[cli] = {"error": str(exc), "pass": False}
    ran = [r for r in results.values() if "skipped" not in r]
    print(json.dumps({"bench": "clis", "iterations": opts.iterations, "nproc": os.cpu_count(),
                      "chunk_delay_ms": 250, "goal_overhead_p50_ms": GOAL_MS, "clis": results,
                      "all_pass": bool(ran) and all(r.get("pass") for r in ran)}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
