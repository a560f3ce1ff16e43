"""Terminal benchmark against a real ``agent-manager serve`` process; prints JSON.

* keystroke echo round trip: one key is sent over the service's WebSocket and timed until
  the shell's echo of it comes back (bash's line editor, as a person typing sees it), for
  ``--keys`` keys on the local and the sandbox backend, against the same measurement on a
  plain local PTY driven directly by this process (``os.openpty`` + bash: the baseline);
* ``cat`` of ``--mb`` MB through a local terminal (and the same amount through a sandbox
  terminal, written by ``head -c N /dev/zero | tr``) with a client reading as fast as it can:
  throughput, every byte received, and the server's RSS growth (sampled every 10 ms).

Usage: ``.venv/bin/python bench/terminal.py [--keys 1000] [--mb 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

GOALS = {"echo_p50_ms": 5.0, "echo_p99_ms": 30.0, "rss_growth_mb": 50.0}
MB = 1_000_000
KEYS = "abcdefghijklmnopqrstuvwxyz"
CLEAR_EVERY = 40  # Ctrl-U now and then keeps the line short (no wrapping redraws)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 3)


def summary(samples: list[float]) -> dict[str, Any]:
    return {"n": len(samples), "p50_ms": pct(samples, 50), "p90_ms": pct(samples, 90), "p99_ms": pct(samples, 99),
            "max_ms": round(max(samples), 3), "mean_ms": round(statistics.fmean(samples), 3)}


class Server:
    def __init__(self, home: Path) -> None:
        env = {**os.environ, "AGENT_MANAGER_HOME": str(home), "AGENT_MANAGER_KILL_GRACE_S": "0.3"}
        self.proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "serve", "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.proc.stdout is not None
        url = None
        for line in self.proc.stdout:
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                url = match.group(1)
                break
        if url is None:
            raise RuntimeError("server did not start")
        self.url = url
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its pipe drained
        self.headers = {"Authorization": f"Bearer {(home / 'admin-token').read_text().strip()}"}
        for _ in range(200):
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def echo_rounds(send: Any, recv: Any, keys: int) -> list[float]:
    """Per key: send it, then wait for a chunk carrying it back. ``recv()`` returns bytes."""
    samples: list[float] = []
    for i in range(keys):
        if i % CLEAR_EVERY == 0:
            await send(b"\x15")  # Ctrl-U: clear the line, then drain the redraw
            await asyncio.sleep(0.02)
            await drain(recv)
        key = KEYS[i % len(KEYS)].encode()
        start = time.perf_counter()
        await send(key)
        while key not in await recv():
            pass
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def drain(recv: Any) -> None:
    while True:
        try:
            await asyncio.wait_for(recv(), 0.05)
        except TimeoutError:
            return


async def wait_prompt(recv: Any) -> None:
    got = b""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and b"$ " not in got and b"# " not in got:
        try:
            got += await asyncio.wait_for(recv(), 0.5)
        except TimeoutError:
            pass
    await drain(recv)


async def bench_service(server: Server, backend: str, keys: int, mb: int, workdir: Path) -> dict[str, Any]:
    async with (httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as api,
                aiohttp.ClientSession(headers=server.headers) as session):
        term = (await api.post("/api/terminals", json={"backend": backend, "cols": 200, "rows": 50})).json()
        ws = await session.ws_connect(server.url.replace("http", "ws") + f"/api/terminals/{term['id']}/ws",
                                      max_msg_size=0)

        async def recv() -> bytes:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    return bytes(msg.data)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    raise RuntimeError("terminal closed")

        await ws.send_bytes(b"PS1='$ '; unset PROMPT_COMMAND; bind 'set enable-bracketed-paste off'\n")
        await wait_prompt(recv)
        echo = summary(await echo_rounds(ws.send_bytes, recv, keys))
        await ws.send_bytes(b"\x15clear\n")
        await wait_prompt(recv)
        # a big output, read as fast as we can, while sampling the server's memory
        total = mb * MB
        if backend == "local":
            big = workdir / "big.txt"
            with big.open("wb") as fh:
                line = b"x" * 99 + b"\n"
                for _ in range(total // len(line)):
                    fh.write(line)
            command = f"cat {big}; echo; echo END-$((40+2))\n"
        else:
            command = f"head -c {total} /dev/zero | tr '\\0' 'x'; echo; echo END-$((40+2))\n"
        before = server.rss_kb()
        peak = before
        stop = False

        async def sample() -> None:
            nonlocal peak
            while not stop:
                peak = max(peak, server.rss_kb())
                await asyncio.sleep(0.01)
        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        await ws.send_bytes(command.encode())
        received, tail = 0, b""
        while b"END-42" not in tail:
            chunk = await recv()
            received += len(chunk)
            tail = (tail + chunk)[-64:]
        elapsed = time.perf_counter() - start
        stop = True
        await sampler
        await ws.close()
        await api.delete(f"/api/terminals/{term['id']}")
        return {"echo": echo, "big_output": {"mb": mb, "received_mb": round(received / MB, 2),
                                             "mb_s": round(received / MB / elapsed, 1),
                                             "server_rss_growth_mb": round((peak - before) / 1024, 1),
                                             "complete": received >= total}}


async def bench_baseline(keys: int) -> dict[str, Any]:
    """The same keystrokes through a bare PTY: bash on os.openpty, read and written here."""
    master, slave = os.openpty()
    proc = subprocess.Popen([shutil.which("bash") or "/bin/bash", "--norc", "--noprofile", "-i"], stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True,
                            env={"PATH": "/usr/bin:/bin", "TERM": "xterm-256color", "PS1": "$ "})
    os.close(slave)
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()

    async def recv() -> bytes:
        while True:
            try:
                return os.read(master, 65536)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(master, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(master)

    async def send(data: bytes) -> None:
        os.write(master, data)

    try:
        await send(b"bind 'set enable-bracketed-paste off'\n")
        await wait_prompt(recv)
        return {"echo": summary(await echo_rounds(send, recv, keys))}
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="am-bench-terminal-"))
    server = Server(tmp / "home")
    try:
        results = {"baseline_pty": await bench_baseline(args.keys)}
        for backend in ("local", "sandbox"):
            results[backend] = await bench_service(server, backend, args.keys, args.mb, tmp)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    checks = {}
    for backend in ("local", "sandbox"):
        echo, big = results[backend]["echo"], results[backend]["big_output"]
        checks[f"{backend}_echo_p50"] = echo["p50_ms"] <= GOALS["echo_p50_ms"]
        checks[f"{backend}_echo_p99"] = echo["p99_ms"] <= GOALS["echo_p99_ms"]
        checks[f"{backend}_rss_growth"] = big["server_rss_growth_mb"] <= GOALS["rss_growth_mb"] and big["complete"]
    print(json.dumps({"params": vars(args), "nproc": os.cpu_count(), "goals": GOALS, "results": results,
                      "pass": checks, "all_pass": all(checks.values())}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
