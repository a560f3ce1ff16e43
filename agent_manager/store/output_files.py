"""Big output text of run events, kept in one append-only file per run beside the database.

Why: a fast agent writes hundreds of MB. Stored as JSON text in SQLite rows, every byte was
encoded, written to the WAL, checkpointed into the database and read back through SQLite for
each listener; the event writer spent most of its time there. Now the writer appends the
text of a large ``output`` event to ``<db dir>/run-output/<run id>`` as the UTF-8 bytes the
agent printed, and the row keeps only where it is: ``{"stream": ..., "text_bytes": [offset,
length]}``. Readers splice the bytes back, so every API sees the same ``{"stream", "text"}``
event as before, live and on replay; the raw output endpoint (``web/raw_output.py``) sends
the bytes as they are, with no transformation at all. Small chunks stay inline: a file per
chatty run would cost more than it saves.

Raw bytes rather than JSON-escaped text: escaping on the way in cost the writer thread (and
the GIL) as much as the write itself, and made every raw reader unescape again. SSE listeners
escape a piece when they send it (``escape_bytes``). Rows written by the first version of this
module (``text_file``: escaped text) are still read.

The guarantee is unchanged: the bytes are written (``os.write``, so a kill -9 of the service
keeps them) before the transaction of their row commits, and nobody reads a row before that
commit. Like the last WAL transactions, they are flushed to the disk later (``sync``, before
the writer's idle checkpoint), so only a power loss can drop recent ones; a range that is
missing then reads as the bytes that exist (whole characters only).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

SPILL_MIN_CHARS = 4096  # output text at least this long goes to the run's file
FIELD = "text_bytes"  # [offset, length] of the text's UTF-8 bytes in the run's file
ESCAPED_FIELD = "text_file"  # the first format: [offset, length] of JSON-escaped text (read only)
READ_BLOCK = 1024 * 1024  # raw readers get a file range in pieces of at most this size
# A big output is not kept in the page cache behind the writer: every ``DROP_STEP`` written, the
# part more than ``DROP_LAG`` behind the end is written back and dropped from the cache. Why: a
# 200 MB log otherwise takes 200 MB of fresh page cache, whose allocation cost the writer thread
# more than the write itself (0.45 s of system time per 200 MB on the test VM, 0.1 s when the
# pages are recycled), and pushed useful pages (the database's) out of the cache. The lag keeps
# a reader that follows a fast run some way behind (a browser) reading from the cache: these
# reads run on the event loop, and one that waits for the disk holds up every request.
DROP_STEP = 16 * 1024 * 1024
DROP_LAG = 64 * 1024 * 1024
# A long read (a replay) asks the kernel to read this far ahead of the piece being sent, so the
# file is read from the disk while the loop sends, rather than one 1 MiB read at a time between.
READ_AHEAD = 4 * 1024 * 1024
READ_THREADS = 4  # file reads that may wait for the disk run on these, not on the event loop
_read_pool: ThreadPoolExecutor | None = None
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def escape(text: str) -> bytes:
    """The JSON string body of ``text`` (no quotes), byte for byte what ``json.dumps(text,
    ensure_ascii=False)`` writes."""
    return escape_bytes(text.encode("utf-8", "surrogatepass"))


def escape_bytes(raw: bytes) -> bytes:
    """``escape`` of the text whose UTF-8 bytes are ``raw``. Why orjson: escaping is most of an
    SSE listener's cost on the event loop, and its vectorised escape ran at 3.1-3.4 GB/s in the
    service here, against 1.8 GB/s for the best pure-Python way (28 memchr checks for the rare
    control bytes, then byte replacements): a curl follower of a 200 MB writer went from
    494-584 to 562-597 MB/s (bench/scale.py, 3 interleaved pairs). The cost: its transient
    buffers (the decoded text, then its output) add 10-30 MB at the peak of a fast follower.
    Its output is identical to ``json.dumps(ensure_ascii=False)``
    (tested on every control byte and on random text). A lone surrogate (kept through
    ``surrogatepass``, text.py) is not UTF-8 and orjson refuses it: that rare text takes the
    standard encoder."""
    try:
        return orjson.dumps(raw.decode("utf-8"))[1:-1]
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # not written by the service (a file changed behind its back)
        text = raw.decode("utf-8", "replace")
    return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")


def reference(data: str) -> tuple[dict[str, Any], str, int, int] | None:
    """A stored ``data`` column that refers to a file: (its other fields, which format, offset,
    length); None for an inline row (the common case is decided without parsing)."""
    if f'"{FIELD}":' not in data and f'"{ESCAPED_FIELD}":' not in data:
        return None
    obj = json.loads(data)
    for field in (FIELD, ESCAPED_FIELD):
        ref = obj.pop(field, None)
        if isinstance(ref, list) and len(ref) == 2:
            return obj, field, int(ref[0]), int(ref[1])
    return None


def read_pool() -> ThreadPoolExecutor:
    """Where readers (raw output, SSE) read a part of a run's file that may have left the page
    cache (``DROP_LAG``): a read that waits for the disk must not hold up the event loop."""
    global _read_pool
    if _read_pool is None:
        _read_pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="am-output-read")
    return _read_pool


def _whole_characters(body: bytes) -> bytes:
    """``body`` without an incomplete UTF-8 character at its end (a file cut short)."""
    for cut in range(min(len(body), 3) + 1):
        try:
            body[:len(body) - cut].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            continue
        return body[:len(body) - cut]
    return body.decode("utf-8", "ignore").encode()


class OutputFiles:
    """The directory of per-run output files; appends happen on the writer thread only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._made = False
        self.dirty: set[str] = set()  # written since the last ``sync`` (the writer thread's)

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):  # run ids are generated; anything else never names a file
            raise ValueError(f"not a run id: {key!r}")
        return self.directory / key

    def wants(self, type_: str, data: dict[str, Any]) -> bool:
        text = data.get("text")  # text, or the ASCII bytes a pipe reader kept (``Chunk.raw``)
        return type_ == "output" and isinstance(text, str | bytes) and len(text) >= SPILL_MIN_CHARS

    def appender(self) -> Appender:
        if not self._made:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._made = True
        return Appender(self)

    def _escaped(self, key: str, field: str, offset: int, length: int, printed: bytes | None = None) -> bytes:
        body = printed if printed is not None and field == FIELD and len(printed) == length else self._read(
            key, offset, length)
        if field == FIELD:
            return escape_bytes(_whole_characters(body) if len(body) < length else body)
        if len(body) < length:  # the first format, cut short: never end inside a character or an escape
            text = body.decode("utf-8", "ignore")
            for cut in range(min(len(text), 6) + 1):
                with contextlib.suppress(ValueError):
                    json.loads(f'"{text[:len(text) - cut]}"')
                    return text[:len(text) - cut].encode("utf-8", "surrogatepass")
            return b""
        return body

    def expand(self, key: str, data: str) -> str:
        """A stored ``data`` column as the API shows it: a file reference becomes ``"text"``."""
        found = reference(data)
        if found is None:
            return data
        obj, field, offset, length = found
        body = self._escaped(key, field, offset, length).decode("utf-8", "surrogatepass")
        head = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))[:-1]
        return f'{head}{"," if obj else ""}"text":"{body}"}}'

    def frame(self, key: str, data: str, at: str, printed: bytes | None = None) -> list[bytes] | None:
        """The SSE ``data:`` payload of a file-backed row as bytes pieces, ``"at"`` first (as
        ``sse.with_time`` adds it); None for an inline row. ``printed``: the row's bytes, already
        in memory (live readers). The common row (UTF-8 text, string fields) is one orjson call
        and one piece, which ``sse.sendable`` sends without copying it again: a curl follower
        of a 200 MB writer took 13 % less of the service's CPU and ran 9 % faster (718 → 786
        MB/s, five interleaved pairs of four runs) than with the escaped text sliced out of
        orjson's answer and joined with its head."""
        found = reference(data)
        if found is None:
            return None
        obj, field, offset, length = found
        if field == FIELD and all(isinstance(value, str) for value in obj.values()):
            body = printed if printed is not None and len(printed) == length else self._read(key, offset, length)
            with contextlib.suppress(UnicodeDecodeError, TypeError):
                # The whole payload in one call: no slicing and no joining (a copy each of up to
                # 1 MiB); orjson writes what json.dumps(ensure_ascii=False) writes for strings.
                text = (_whole_characters(body) if len(body) < length else body).decode("utf-8")
                return [orjson.dumps({"at": at, **obj, "text": text})]
        body = self._escaped(key, field, offset, length, printed)
        head = json.dumps({"at": at, **obj}, ensure_ascii=False, separators=(",", ":"))[:-1]
        return [head.encode(), b',"text":"', body, b'"}']

    def far(self, key: str, data: str) -> bool:
        """Whether a stored ``data`` column refers to bytes more than ``DROP_LAG`` behind the end
        of the run's file: they may have left the page cache, and a read may wait for the disk."""
        found = reference(data)
        if found is None:
            return False
        try:
            return found[2] < os.stat(self.path(key)).st_size - DROP_LAG
        except (OSError, ValueError):
            return False

    def raw(self, key: str, field: str, offset: int, length: int, fd: int | None = None) -> Iterator[bytes]:
        """The printed bytes of a file-backed text, in pieces of at most ``READ_BLOCK`` (a raw
        reader of 200 MB holds one piece at a time). ``fd``: the run's file, opened by the
        caller (``open``) for many reads."""
        if field == ESCAPED_FIELD:
            body = self._escaped(key, field, offset, length)
            yield json.loads(b'"' + body + b'"').encode("utf-8", "replace")
            return
        ahead = offset  # read-ahead asked for up to here (a long range of a file the cache dropped)
        while length > 0:
            size = min(length, READ_BLOCK)
            start, end = max(ahead, offset + size), min(offset + length, offset + size + 2 * READ_AHEAD)
            if fd is not None and end > start and ahead < offset + size + READ_AHEAD:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)  # 0 would mean "to the end"
                ahead = end
            piece = self._read(key, offset, size, fd)
            if len(piece) < size:
                yield _whole_characters(piece)
                return
            yield piece
            offset += size
            length -= size

    def open(self, key: str) -> int | None:
        """The run's file opened for reading (the caller closes it), None when there is none."""
        try:
            return os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None

    def _read(self, key: str, offset: int, length: int, given: int | None = None) -> bytes:
        fd = self.open(key) if given is None else given
        if fd is None:
            return b""
        try:
            parts: list[bytes] = []
            while length > 0:
                piece = os.pread(fd, length, offset)
                if not piece:
                    break
                parts.append(piece)
                offset += len(piece)
                length -= len(piece)
        finally:
            if given is None:
                os.close(fd)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def sync(self) -> None:
        """Flush the files written since the last call (before a checkpoint makes rows durable)."""
        dirty, self.dirty = self.dirty, set()
        for key in dirty:
            with contextlib.suppress(OSError, ValueError):
                fd = os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(OSError, ValueError):
                self.path(key).unlink()


class Appender:
    """One batch's open files (the writer thread's): append, then close after the commit."""

    def __init__(self, files: OutputFiles) -> None:
        self.files = files
        self._open: dict[str, tuple[int, int]] = {}  # key -> (fd, size)

    def append(self, key: str, body: bytes) -> tuple[int, int]:
        """Write ``body`` at the end of the run's file; returns (offset, length)."""
        if key in self._open:
            fd, size = self._open[key]
        else:
            fd = os.open(self.files.path(key), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
            size = os.fstat(fd).st_size
        self._open[key] = (fd, size)
        self.files.dirty.add(key)
        view = memoryview(body)
        written = 0
        try:
            while written < len(body):
                written += os.write(fd, view[written:])
        except OSError:
            if written:  # keep the offsets true: the partial bytes stay, unreferenced
                self._open[key] = (fd, size + written)
            raise
        self._open[key] = (fd, size + written)
        end = size + written
        if end > DROP_LAG and end // DROP_STEP != size // DROP_STEP:
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, end - DROP_LAG, os.POSIX_FADV_DONTNEED)
        return size, written

    def close(self) -> None:
        for fd, _size in self._open.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open.clear()
