"""The one follow loop of the CLI (cli/follow.py) against a server that drops the stream
mid-way: it reopens with ?after=<last seq handed on>, so nothing is shown twice or lost."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from agent_manager.cli.client import Client
from agent_manager.cli.follow import follow, sse_events

EVENTS = [(1, "output", {"stream": "stdout", "text": "one\n"}), (2, "output", {"stream": "stdout", "text": "two\n"}),
          (3, "output", {"stream": "stdout", "text": "three\n"}), (4, "run.finished", {"status": "succeeded"})]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    asked: list[int] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        after = int(parse_qs(urlparse(self.path).query)["after"][0])
        first = not self.asked
        self.asked.append(after)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for seq, event, data in EVENTS:
            if seq <= after:
                continue
            self._chunk(f"id: {seq}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode())
            if first and seq == 2:  # drop the connection mid-body: no terminating chunk
                self.close_connection = True
                return
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that closes once it has its final event is right: no traceback for it."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.asked = []
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_dropped_stream_resumes_after_the_last_event(server: str, tmp_path: Path) -> None:
    client = Client({"home": str(tmp_path / "home"), "url": server})
    seen: list[tuple[str, dict[str, Any]]] = []
    final = follow(client, "/api/runs/r1/events", "run r1", "run.finished", lambda e, d: seen.append((e, d)))
    assert final == {"status": "succeeded"}
    assert _Handler.asked == [0, 2]
    assert [d.get("text") for e, d in seen if e == "output"] == ["one\n", "two\n", "three\n"]


def test_text_with_unicode_line_separators_is_one_event_however_it_arrives() -> None:
    """JSON leaves U+2028, U+2029 and U+0085 unescaped (the service writes ensure_ascii=False);
    they are not SSE line ends, so an event holding them stays whole, wherever the pieces cut."""
    texts = ["a\u2028b\u2029c\x85d\x1ce\n", "é 中 😀\r\n"]
    body = b"".join(f"id: {n}\nevent: output\ndata: {json.dumps({'text': t}, ensure_ascii=False)}\r\n\n".encode()
                    for n, t in enumerate(texts, 1)) + b": keepalive\n\n"
    for cut in range(len(body) + 1):
        response = httpx.Response(200, content=iter([body[:cut], body[cut:]]))
        assert [(seq, data["text"]) for seq, _, data in sse_events(response)] == list(enumerate(texts, 1)), cut
