"""Server-sent events over an ``EventLog``: replay what was missed, then follow live.

Framing (DESIGN 3.3): ``id: <seq>``, ``event: <type>``, ``data: <json>`` (with ``at``, the time it
was stored). The stream closes
after the event the caller's ``ends(type, seq)`` picks, so a finished run replays and ends.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from agent_manager.errors import BadRequest
from agent_manager.events import EventLog
from agent_manager.store.output_files import read_pool

KEEPALIVE_S = 15.0
BATCH = 64
# Frames are sent in pieces of about this size: small events still go out many to one write,
# and a listener replaying hundreds of MB holds one piece at a time (the transport's flow
# control then paces the file reads), not 64 joined events of 256 KiB.
SEND_BYTES = 256 * 1024
BIG_PART = 64 * 1024  # a frame part this big is sent on its own, not copied into a joined piece
# Event numbers are SQLite integers; anything larger is refused up front (``le=MAX_SEQ`` on
# ``?after=``) rather than failing inside a stream that already answered 200.
MAX_SEQ = 2**63 - 1
SEQ_RE = re.compile(r"[0-9]{1,18}")


def resume_point(request: Request, after: int | None) -> int:
    """``?after=`` wins over ``Last-Event-ID`` (an explicit ask beats the browser's memory)."""
    if after is not None:
        return max(after, 0)
    header = request.headers.get("last-event-id", "").strip()
    if not header:
        return 0
    if not SEQ_RE.fullmatch(header):  # ASCII digits only: "²".isdigit() is True, int("²") fails
        raise BadRequest("Last-Event-ID: must be an event number (ASCII digits)",
                         [{"field": "Last-Event-ID", "in": "header", "message": "not an event number"}])
    return int(header)


def wants_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


Ends = Callable[[str, int], bool]


def with_time(data: str, at: str) -> str:
    """The stored JSON object with ``"at"`` (when the event was stored) added, without decoding it:
    a replayed log then shows when each line was written, not when it was replayed."""
    if not data.startswith("{") or '"at":' in data:
        return data
    return f'{{"at":"{at}"}}' if data.strip() == "{}" else f'{{"at":"{at}",{data[1:]}'


def sendable(parts: list[bytes]) -> list[bytes]:
    """``parts`` as few pieces to send: runs of small parts joined, a big one (a fast writer's
    output text, up to 1 MiB) sent as it is. Why: joining copied every byte of a fast writer's
    output once more on the event loop, and the server copies each piece again anyway (its
    chunked framing)."""
    out: list[bytes] = []
    small: list[bytes] = []
    for part in parts:
        if len(part) < BIG_PART:
            small.append(part)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(part)
    if small:
        out.append(b"".join(small))
    return out


async def frames(log: EventLog, key: str, after: int, ends: Ends,
                 over: Callable[[], bool] | None = None) -> AsyncIterator[bytes]:
    """``over``: whether the owner has ended (its last event stored); asked when the log stays
    silent, so a stream resumed past the owner's last event ends instead of idling forever."""
    while True:
        rows = log.read_raw(key, after, BATCH)
        if rows:
            parts: list[bytes] = []
            size = 0
            done = False
            for seq, type_, data, at in rows:
                if (log.files is not None and '"text_' in data and log.printed(key, seq) is None
                        and log.files.far(key, data)):
                    # Far behind the end of the run's file: its bytes may have to come from the
                    # disk (``output_files.DROP_LAG``), which the event loop must not wait for.
                    spilled = await asyncio.get_running_loop().run_in_executor(
                        read_pool(), log.frame_data, key, data, at, seq)
                else:
                    spilled = log.frame_data(key, data, at, seq)
                frame = ([f"id: {seq}\nevent: {type_}\ndata: {with_time(data, at)}\n\n".encode()] if spilled is None
                         else [f"id: {seq}\nevent: {type_}\ndata: ".encode(), *spilled, b"\n\n"])
                parts.extend(frame)
                size += sum(len(part) for part in frame)
                after = seq
                if ends(type_, seq):
                    done = True
                    break
                if size >= SEND_BYTES:
                    for piece in sendable(parts):
                        yield piece
                    parts, size = [], 0
            for piece in sendable(parts):
                yield piece
            if done:
                return
            continue
        if log.closed:  # the service is stopping: what was stored has been sent
            return
        if not await log.wait(key, after, KEEPALIVE_S):
            if over is not None and over() and not log.stored_after(key, after):
                return
            yield b": keepalive\n\n"


def stream(log: EventLog, key: str, after: int, ends: Ends, over: Callable[[], bool] | None = None) -> Response:
    """The SSE response; 204 when the owner has ended and nothing is stored after ``after`` (a
    client resuming at or past the end: 204 also stops an EventSource from reconnecting)."""
    if over is not None and over() and not log.stored_after(key, after):
        return Response(status_code=204)
    return StreamingResponse(frames(log, key, after, ends, over), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
