"""Oversized request bodies against a real server on a real port; prints JSON.

Starts ``agent-manager serve --port 0`` in a temporary data directory and POSTs ``--mb`` MiB to
``/api/runs`` twice: with a ``Content-Length`` and chunked (no length). For each it reports how
much the client managed to send before the answer came, the status line, how long that took and
how much the server's RSS grew. See bench/README.md.

Usage: ``.venv/bin/python bench/body_limit.py [--mb 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def send(url: str, token: str, chunked: bool, total: int) -> dict[str, Any]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (f"POST /api/runs HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n") + "\r\n")
    started = time.monotonic()
    sock.sendall(head.encode())
    piece = b'{"agent": "' + b"a" * (1 << 20)
    sent, answer = 0, b""
    sock.setblocking(False)
    try:
        while sent < total and not answer:
            try:
                answer = sock.recv(65536)
                break
            except BlockingIOError:
                pass
            data = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
            try:
                sock.settimeout(5)
                sock.sendall(data)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(piece)
        sock.settimeout(10)
        while b"\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return {"sent_mib": round(sent / (1 << 20), 1), "status": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
            "seconds": round(time.monotonic() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="am-bench-")) / "home"
    proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "AGENT_MANAGER_HOME": str(home)})
    try:
        assert proc.stdout is not None
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("the server did not start")
            match = re.search(r"listening on (http://\S+)", line)
            url = match.group(1) if match else None
        parts = urlsplit(url)
        for _ in range(200):  # the listening line comes before the server answers
            try:
                socket.create_connection((parts.hostname, parts.port), timeout=1).close()
                if (home / "admin-token").exists():
                    break
            except OSError:
                pass
            time.sleep(0.05)
        token = (home / "admin-token").read_text().strip()
        result: dict[str, Any] = {"body_mib": args.mb}
        for mode in ("content-length", "chunked"):
            before = rss_kb(proc.pid)
            result[mode] = send(url, token, mode == "chunked", args.mb << 20)
            result[mode]["rss_growth_mib"] = round((rss_kb(proc.pid) - before) / 1024, 1)
        print(json.dumps(result))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
