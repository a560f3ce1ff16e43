"""An idle keep-alive connection outlives the clients' own idle expiry.

uvicorn closes an idle connection after 5 s by default, and httpx reuses one for up to 5 s: a
request sent on a connection about 5 s idle raced the server's close and got no answer (seen
as httpx.ReadError on POST /api/runs in a burst of 300 from one pooled client, 1-7 per burst;
none with the server holding connections longer)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from conftest import LiveServer


def _request(sock: socket.socket, host: str, token: str) -> bytes:
    sock.sendall(f"GET /api/users/me HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_an_idle_connection_is_still_open_after_clients_would_reuse_it(live_server: LiveServer) -> None:
    url = urlsplit(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        assert _request(sock, url.netloc, live_server.token).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # past uvicorn's default keep-alive (5 s), which httpx's expiry equals
        assert _request(sock, url.netloc, live_server.token).startswith(b"HTTP/1.1 200")
