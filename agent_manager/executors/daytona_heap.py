"""The Daytona worker's heap upkeep: free C-heap pages go back to the system while runs come and go.

Why: the C allocator (glibc) keeps memory freed in the middle of its heaps as free chunks of the
process, and only the top of a heap is given back on its own. In the worker, a burst of
thousands of runs frees a lot in the middle (decoded API answers, request and WebSocket buffers,
the SDK objects of ended runs): at 2,000 runs about 17 MB of its RSS was such free memory
(notes issue-15i). ``malloc_trim(0)`` hands every free page back; it took 3-10 ms at that size,
on the worker's own loop (never the service's), at most once per ``TRIM_EVERY_S`` and only
after something happened. Where the C library has no ``malloc_trim`` (musl, macOS), nothing is
done. Python's own small-object arenas are returned by Python itself when they empty.

What a run in flight costs is the rest: the SDK's tracing (``quiet_sdk_spans``) and its TLS
connections (``small_tls_buffers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
from collections.abc import Callable
from typing import Any

TRIM_EVERY_S = 1.0


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    with contextlib.suppress(OSError, AttributeError):
        trim = ctypes.CDLL(None).malloc_trim
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        return trim
    return None


def freeze_start_up() -> None:
    """Move what start-up built (the SDK's modules and models, about 140,000 objects) out of
    the cyclic GC's reach, as the service does with its own (``cli/serve.freeze_heap``).

    Why: every full collection walked them again, on the worker's loop, while thousands of runs
    waited for their output to be forwarded. With 2,000 emulated runs the worker's 25 full
    collections took 7.1 s in all, the longest 1.1 s; frozen after ``hello``, 3.9 s and 0.56 s
    (gc callbacks timing each, ``bench/scale.py --cases daytona --daytona-runs 2000``). Frozen
    objects are still freed by reference counting; only cycles among them are never collected,
    so the garbage of start-up is collected first."""
    gc.collect()
    gc.freeze()


class _QuietScope:
    """What the SDK's ``with tracer.start_as_current_span(...) as span`` gets in the worker: the
    API's own do-nothing span, no context attached, one shared instance (``__exit__`` returns
    None, so the call's exception goes on unchanged)."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        return self.span

    def __exit__(self, *exc: object) -> None:
        return None


def quiet_sdk_spans() -> None:
    """Give the SDK's per-call spans a tracer that allocates nothing, for this process (the worker).

    Why: every SDK method is wrapped in ``with_instrumentation``, which opens an OpenTelemetry
    span even when no tracing is configured: the API's no-op tracer still builds a generator,
    a context manager, a new context and its token per call, kept while the call is in flight.
    A call in flight cost 3.2 KB beyond a bare task with the no-op tracer, 1.2 KB with this one,
    and thousands are in flight at once (each run awaits several nested SDK calls for seconds).
    With 2,000 emulated runs the worker's peak RSS went 214.1 -> 203.8 and 200.5 -> 194.4 MB in
    two alternating pairs (``bench/scale.py --cases daytona --daytona-runs 2000``). Nothing is
    lost: the service never turns the SDK's tracing on (``DaytonaConfig.otel_enabled``), so those
    spans went nowhere.
    Only for the worker: the provider is global to a process, and the service's may be someone's."""
    from opentelemetry import trace

    scope = _QuietScope(trace.INVALID_SPAN)

    class QuietTracer(trace.NoOpTracer):
        def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
            return scope

    class QuietProvider(trace.NoOpTracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return QuietTracer()

    trace.set_tracer_provider(QuietProvider())


TLS_READ_SIZE = 16 * 1024  # one TLS record at most: what the worker's TLS connections read at a time


def small_tls_buffers(size: int = TLS_READ_SIZE) -> None:
    """Make each TLS connection of this process (the worker) read into ``size`` bytes, not 256 KiB.

    Why: asyncio gives every TLS connection its own receive buffer of ``SSLProtocol.max_size``
    (256 KiB, zero-filled, so all of it resident), and every run in flight holds one: its log
    WebSocket to the sandbox's toolbox (Daytona is HTTPS and WSS only). 1,000 idle TLS WebSockets
    of an aiohttp client here: +302 MB of RSS (309 KB each, against 13 KB plain); with 16 KiB,
    +65 MB (67 KB each; 32 KiB: 83). With 300 emulated runs over HTTPS the worker peaked at
    260 MB. A TLS record holds at most 16 KiB, so a bigger read only saves calls on bulk
    transfers: 200 MB over loopback TLS ran at 245-270 MB/s against 279-319 (both ends in one
    process), far above any link to Daytona. Only the class attribute is changed, where this
    Python has it (3.11-3.13: ``asyncio.sslproto``); nothing otherwise."""
    from asyncio import sslproto

    if isinstance(getattr(sslproto.SSLProtocol, "max_size", None), int):
        sslproto.SSLProtocol.max_size = size


class Trimmer:
    """``poke()`` after work that allocates or frees in bulk (a call, a run's end): one trim
    follows ``TRIM_EVERY_S`` later, however many pokes came meanwhile."""

    def __init__(self, trim: Callable[[int], int] | None = None, every: float = TRIM_EVERY_S) -> None:
        self._trim = trim if trim is not None else malloc_trim()
        self._every = every
        self._due: asyncio.TimerHandle | None = None
        self.trims = 0

    def poke(self) -> None:
        if self._trim is not None and self._due is None:
            self._due = asyncio.get_running_loop().call_later(self._every, self._run)

    def _run(self) -> None:
        self._due = None
        if self._trim is not None:
            self._trim(0)
            self.trims += 1

    def close(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
