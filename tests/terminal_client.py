"""A small WebSocket client for terminal tests and benches (aiohttp, as the Daytona SDK uses)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import httpx


class TermSocket:
    """One attachment: collects output, reads control frames, waits for text to appear."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.out = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.out += msg.data
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self.controls.append(json.loads(msg.data))
                self._changed.set()
        finally:
            self.closed.set()
            self._changed.set()

    def text(self) -> str:
        return self.out.decode(errors="replace")

    async def expect(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) matches the output so far."""
        async def wait() -> re.Match[str]:
            while True:
                found = re.search(pattern, self.text())
                if found:
                    return found
                if self.closed.is_set():
                    raise AssertionError(f"closed before {pattern!r}; output: {self.text()[-2000:]!r}")
                self._changed.clear()
                await self._changed.wait()
        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {timeout}s; output: {self.text()[-2000:]!r}") from None

    async def control(self, key: str, timeout: float = 15) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                for message in self.controls:
                    if key in message:
                        return message
                if self.closed.is_set():
                    raise AssertionError(f"closed without a {key!r} message: {self.controls}")
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(wait(), timeout)

    async def send(self, data: bytes | str) -> None:
        await self.ws.send_bytes(data.encode() if isinstance(data, str) else data)

    async def resize(self, cols: Any, rows: Any) -> None:
        await self.ws.send_str(json.dumps({"resize": [cols, rows]}))

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_terminal(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/terminals", json=body)
    assert response.status_code == 201, response.text
    term: dict[str, Any] = response.json()
    return term


async def attach(session: aiohttp.ClientSession, base_url: str, terminal_id: str,
                 headers: dict[str, str] | None = None) -> TermSocket:
    url = base_url.replace("http://", "ws://") + f"/api/terminals/{terminal_id}/ws"
    ws = await session.ws_connect(url, headers=headers or {}, max_msg_size=0)
    return TermSocket(ws)
