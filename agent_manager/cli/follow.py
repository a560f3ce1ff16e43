"""Following a run's or an orchestration's event stream from the command line, and stopping it.

One loop serves ``run`` and ``orchestrate`` (and the stop-signal handling ``plan`` shares): the
service keeps every event in a numbered log, so a dropped stream is reopened with
``?after=<last seq printed>`` and nothing is shown twice or lost; a service that stays away
ends the command with one line instead of a traceback. Ctrl-C, SIGTERM and SIGHUP cancel what
the command started (``cancelling_signals`` + ``cancel_then_exit``) rather than leave it going,
even when they arrive while the request that starts it is in flight (``held_stops``).
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import click

from agent_manager.cli.client import Client

if TYPE_CHECKING:  # imported where a stream is followed (see client.py)
    import httpx

RECONNECT_S = 5.0
QUEUED_EVENTS = 256  # read ahead of the printing by at most this many events


def sse_lines(response: httpx.Response) -> Iterator[str]:
    """The stream's lines as SSE ends them: at LF, or CRLF (this service never ends one with a lone
    CR). Not ``iter_lines``: ``str.splitlines`` also splits at U+2028, U+2029, U+0085 and the
    like, which JSON leaves unescaped in an event's text, and cut such an event in two."""
    pending: list[bytes] = []
    for piece in response.iter_bytes():
        if b"\n" not in piece:
            pending.append(piece)
            continue
        *lines, rest = b"".join([*pending, piece]).split(b"\n")
        pending = [rest] if rest else []
        for line in lines:  # no UTF-8 character has a byte equal to LF: whole characters
            yield line.removesuffix(b"\r").decode("utf-8", "replace")


def sse_events(response: httpx.Response) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Parse an SSE byte stream into (id, event, data) triples."""
    seq, event, data = 0, "message", list[str]()
    for line in sse_lines(response):
        if not line:
            if data:
                yield seq, event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("id:"):
            seq = int(line[3:].strip())
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def follow(client: Client, path: str, what: str, final: str,
           on_event: Callable[[str, dict[str, Any]], None]) -> dict[str, Any]:
    """Hand every event of the stream at ``path`` to ``on_event`` until the ``final`` event,
    whose data is returned. A dropped stream is resumed after the last event handed on; a
    service unreachable for ``RECONNECT_S`` ends the command with one line naming ``what``.

    The stream is read on a daemon thread, and this (the main) thread waits for its events and
    hands them on. Why: a stop signal's handler raises where the main thread is. Raised inside
    httpx's socket read, at any point of its bookkeeping, the exception could be lost (once in
    CI, `orchestrate` went on following for 30 s after SIGTERM); raised here, in our own wait or
    printing, it always reaches the caller, which cancels and exits. The reader never prints: a
    daemon thread stopped at exit inside a write to stdout would keep its lock, and the exit's
    flush would abort the interpreter. The queue is bounded, so a slow terminal still slows the
    reading (and the service's sending) rather than filling memory."""
    events: queue.Queue[tuple[str, dict[str, Any]] | BaseException] = queue.Queue(maxsize=QUEUED_EVENTS)

    def read() -> None:
        try:
            _read(client, path, what, final, lambda event, data: events.put((event, data)))
        except BaseException as exc:  # handed to the main thread, raised there
            events.put(exc)

    threading.Thread(target=read, name="follow", daemon=True).start()
    while True:
        item = events.get()
        if isinstance(item, BaseException):
            raise item
        event, data = item
        on_event(event, data)
        if event == final:
            return data


def _read(client: Client, path: str, what: str, final: str,
          hand_on: Callable[[str, dict[str, Any]], None]) -> None:
    import httpx

    last = 0
    lost_since: float | None = None
    while True:
        try:
            with client.http.stream("GET", path, params={"after": last},
                                    headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    response.read()
                    Client.check(response)
                if response.status_code == 204:  # ended, and nothing stored after ``last``
                    raise click.ClickException(f"{what} has ended without its final event")
                lost_since = None
                for seq, event, data in sse_events(response):
                    last = seq
                    hand_on(event, data)
                    if event == final:
                        return
        except (httpx.RemoteProtocolError, httpx.ReadError):
            continue  # the stream dropped: resume after the last event handed on
        except httpx.TransportError as exc:  # refused, reset, timed out: the service went away
            lost_since = wait_for_service(client, exc, lost_since, what)


def wait_for_service(client: Client, exc: httpx.TransportError, lost_since: float | None, what: str) -> float:
    """The service is unreachable: wait a little and let the caller retry, or, once it has stayed
    away ``RECONNECT_S``, end the command with one line (not an httpx traceback)."""
    now = time.monotonic()
    lost_since = lost_since or now
    if now - lost_since >= RECONNECT_S:
        raise click.ClickException(
            f"lost the connection to the service at {client.url} ({type(exc).__name__}); {what} "
            "was interrupted if the service stopped")
    time.sleep(0.5)
    return lost_since


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: cancel what we follow, as Ctrl-C does. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way takes it for an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: Any) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def cancelling_signals() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP (a closed terminal, `timeout`) raise ``Stopped`` as Ctrl-C raises
    KeyboardInterrupt, so a client killed that way cancels its run or orchestration instead of
    leaving it going in the service. Restored on the way out."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def held_stops() -> Iterator[None]:
    """Inside, a first stop (Ctrl-C, SIGTERM, SIGHUP) waits for the block to end and is raised
    then; a second one is raised at once. For the request that starts something: stopped while
    it was in flight, we never learnt the id of what the service had started, and could not
    cancel it. Now the answer arrives first (the request has its own timeout), then the stop,
    with an id to cancel."""
    held: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        if held:
            raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)
        held.append(signum)
        with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: a write this interrupted
            click.echo("\nstopping once the service has answered (stop again to leave at once)", err=True)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt if held[0] == signal.SIGINT else Stopped(held[0])


def cancel_then_exit(exc: BaseException, cancel: Callable[[], object] | None) -> NoReturn:
    """A stop signal arrived: a second one ends us at once; cancel (when something started), then
    exit 130 (Ctrl-C) or 128 + the signal's number."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    if cancel is not None:
        with contextlib.suppress(OSError):
            click.echo("\ncancelling…", err=True)
        cancel()
    sys.exit(128 + exc.signum if isinstance(exc, Stopped) else 130)
