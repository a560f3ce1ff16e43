"""Ending live connections whose credentials ended.

Why: checking credentials once, when a request starts, is not enough for connections that live
for hours — a terminal's WebSocket (a shell, as the service's own user for the admin) or an
event stream. Logging out, rotating a token, or deleting, demoting or distrusting a user must
end what a copied cookie or old token already opened, not only what it opens next.

Each such change bumps ``Revocations`` (the app's one instance); every guarded connection then
re-checks its principal at once (and every ``RECHECK_S`` anyway, for sessions that expire). A
WebSocket whose principal ended or changed is closed with ``CLOSE_REVOKED``; an HTTP stream is
ended at its next write (an event stream writes a keep-alive every 15 s at most).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

RECHECK_S = 30.0
CLOSE_REVOKED = 4401  # WebSocket close code: the credentials of this connection ended


class Revocations:
    """A generation number bumped when some credential may have ended, and a way to wait for it."""

    def __init__(self) -> None:
        self.generation = 0
        self._waiters: set[asyncio.Future[None]] = set()

    def bump(self) -> None:
        self.generation += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        """Until the next bump, or ``timeout`` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)


def of(scope: Scope) -> Revocations | None:
    state = getattr(scope.get("app"), "state", None)
    found = getattr(state, "revocations", None)
    return found if isinstance(found, Revocations) else None


def changed(app: Any) -> None:
    """A session or token may have ended, or a user's rights changed: live connections re-check."""
    found = getattr(getattr(app, "state", None), "revocations", None)
    if isinstance(found, Revocations):
        found.bump()


class Guard:
    """One connection's watch over its credentials. ``check`` says whether they still hold
    (same principal, same rights)."""

    def __init__(self, check: Callable[[], bool], revocations: Revocations) -> None:
        self.check = check
        self.revocations = revocations
        self.seen = revocations.generation
        self.checked_at = time.monotonic()
        self.revoked = False

    def valid(self) -> bool:
        if not self.revoked and (self.revocations.generation != self.seen
                                 or time.monotonic() - self.checked_at >= RECHECK_S):
            self.seen, self.checked_at = self.revocations.generation, time.monotonic()
            self.revoked = not self.check()
        return not self.revoked

    def http(self, send: Send) -> Send:
        """A stream (a body sent in parts) ends at its next part once the credentials ended."""
        async def guarded(message: Message) -> None:
            if self.revoked:
                raise OSError("the credentials of this stream ended")
            if message["type"] == "http.response.body" and message.get("more_body") and not self.valid():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                raise OSError("the credentials of this stream ended")
            await send(message)
        return guarded

    def websocket(self, receive: Receive, send: Send) -> tuple[Receive, Send]:
        """Closes the socket as soon as the credentials end, even while nothing is sent."""
        pending: asyncio.Future[Message] | None = None
        closed = False

        async def close() -> Message:
            nonlocal closed
            if not closed:
                closed = True
                await send({"type": "websocket.close", "code": CLOSE_REVOKED,
                            "reason": "your session or token has ended"})
            return {"type": "websocket.disconnect", "code": CLOSE_REVOKED}

        async def guarded_receive() -> Message:
            nonlocal pending
            if pending is None:
                pending = asyncio.ensure_future(receive())
            while not pending.done():
                waiter: asyncio.Future[Any] = asyncio.ensure_future(self.revocations.wait(RECHECK_S))
                await asyncio.wait([pending, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not self.valid():
                    return await close()
            message, pending = pending.result(), None
            if message["type"] == "websocket.receive" and not self.valid():
                return await close()
            return message

        async def guarded_send(message: Message) -> None:
            if closed:
                return  # the socket is closed: what the app still sends goes nowhere
            if message["type"] == "websocket.send" and not self.valid():
                await close()
                return
            await send(message)

        return guarded_receive, guarded_send
