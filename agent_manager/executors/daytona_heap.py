"""The Daytona worker's heap upkeep: free C-heap pages go back to the system while runs come and go.

Why: the C allocator (glibc) keeps memory freed in the middle of its heaps as free chunks of the
process, and only the top of a heap is given back on its own. In the worker, a burst of
thousands of runs frees a lot in the middle (decoded API answers, request and WebSocket buffers,
the SDK objects of ended runs): at 2,000 runs about 17 MB of its RSS was such free memory
(notes issue-15i). ``malloc_trim(0)`` hands every free page back; it took 3-10 ms at that size,
on the worker's own loop (never the service's), at most once per ``TRIM_EVERY_S`` and only
after something happened. Where the C library has no ``malloc_trim`` (musl, macOS), nothing is
done. Python's own small-object arenas are returned by Python itself when they empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
from collections.abc import Callable

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
