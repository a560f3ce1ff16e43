"""Limits on what one client can make the service do: body size and wrong-credential rate.

Why a body limit in front of everything: FastAPI reads a JSON body whole before validating it,
so without one a single authenticated request could make the service hold gigabytes. A
declared ``Content-Length`` over the limit is refused before a byte of the body is read; a body
without one (chunked) is counted as it arrives and refused the moment it passes the limit.
Either way the answer says ``Connection: close`` so the server stops reading the rest.

Why the failure throttle only ever slows *failures*: the correct token is always checked
first and always works, so an attacker hammering wrong tokens from the admin's own address
cannot lock the admin out; they only earn 429s with a growing ``Retry-After``.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BACKOFF_S = 300.0
FORGET_AFTER_S = 900.0
MAX_CLIENTS = 10_000
EVERYONE = "*"  # not an address: the failures of all clients together
EVERYONE_FACTOR = 10


def too_large_message(limit: int) -> str:
    return (f"the request body is larger than {limit} bytes (setting max_request_bytes); "
            "file uploads above it need a larger setting")


class BodyLimitMiddleware:
    """``limit`` is asked per request, so a settings change applies at once."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.get_limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.get_limit()
        lengths = [v for k, v in scope.get("headers", []) if k == b"content-length"]
        if lengths:
            value = lengths[0].strip()
            if len(lengths) > 1 or not value.isdigit():
                await _refuse(send, 400, "bad_request", "Content-Length: must be one decimal number")
                return
            if int(value) > limit:
                await _refuse(send, 413, "too_large", too_large_message(limit))
                return
        received = 0
        tripped = False

        async def counted_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = True
                    raise HTTPException(413, too_large_message(limit))
            return message

        async def closing_send(message: Message) -> None:
            if tripped and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counted_receive, closing_send)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class FailureThrottle:
    """Per-client count of wrong credentials; past ``allowed`` of them, every further failure
    doubles a back-off (up to 5 minutes) during which failures are answered 429."""

    def __init__(self, allowed: Callable[[], int]) -> None:
        self.allowed = allowed  # asked at each failure, so a settings change applies at once
        self.clock: Callable[[], float] = time.monotonic
        self.clients: OrderedDict[str, _Record] = OrderedDict()

    def _record(self, client: str) -> _Record:
        now = self.clock()
        record = self.clients.get(client)
        if record is None or now - record.last > FORGET_AFTER_S:
            record = _Record()
        self.clients[client] = record
        self.clients.move_to_end(client)
        while len(self.clients) > MAX_CLIENTS:
            self.clients.popitem(last=False)
        return record

    def retry_after(self, client: str) -> float:
        """Seconds this client must wait before its next wrong token is even answered 401."""
        record = self.clients.get(client)
        if record is None:
            return 0.0
        return max(0.0, record.blocked_until - self.clock())

    def failed(self, client: str) -> float:
        """Record one failure; the back-off it starts (0 while still within the allowance).

        Every failure also counts towards all clients together (``EVERYONE``, allowed
        ``EVERYONE_FACTOR`` times as many): the address is what uvicorn makes of
        ``X-Forwarded-For`` for a request from loopback (a proxy it trusts), so a local process
        could otherwise claim a new address for each guess."""
        return max(self._failed(client, self.allowed()), self._failed(EVERYONE, self.allowed() * EVERYONE_FACTOR))

    def _failed(self, client: str, allowed: int) -> float:
        record = self._record(client)
        now = self.clock()
        record.failures += 1
        record.last = now
        over = record.failures - allowed
        if over <= 0:
            return 0.0
        backoff = min(MAX_BACKOFF_S, 2.0 ** min(over - 1, 16))
        record.blocked_until = max(record.blocked_until, now + backoff)
        return record.blocked_until - now


def client_key(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"
