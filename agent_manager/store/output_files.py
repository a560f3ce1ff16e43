"""Big output text of run events, kept in one append-only file per run beside the database.

Why: a fast agent writes hundreds of MB. Stored as JSON text in SQLite rows, every byte was
encoded, written to the WAL, checkpointed into the database and read back through SQLite for
each listener; the event writer spent most of its time there. Now the writer appends the
text of a large ``output`` event to ``<db dir>/run-output/<run id>``, already JSON-escaped
(what an SSE frame carries), and the row keeps only where it is: ``{"stream": ...,
"text_file": [offset, length]}``. Readers splice the bytes back, so every API sees the same
``{"stream", "text"}`` event as before, live and on replay. Small chunks stay inline: a file
per chatty run would cost more than it saves.

The guarantee is unchanged: the bytes are written (``os.write``, so a kill -9 of the service
keeps them) before the transaction of their row commits, and nobody reads a row before that
commit. Like the last WAL transactions, they are flushed to the disk later (``sync``, before
the writer's idle checkpoint), so only a power loss can drop recent ones; a range that is
missing then reads as the bytes that exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

SPILL_MIN_CHARS = 4096  # output text at least this long goes to the run's file
FIELD = "text_file"
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = bytes(c for c in range(32) if c != 10)  # what JSON escapes, besides \n, " and \\


def escape(text: str) -> bytes:
    """The JSON string body of ``text`` (no quotes), byte for byte what ``json.dumps(text,
    ensure_ascii=False)`` writes. Output is mostly lines of printable text: then three byte
    replacements do it at twice the encoder's speed (it runs on the writer thread, holding the GIL)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw.translate(None, _CONTROL)) == len(raw):
        return raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
    return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")


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
        text = data.get("text")
        return type_ == "output" and isinstance(text, str) and len(text) >= SPILL_MIN_CHARS

    def appender(self) -> Appender:
        if not self._made:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._made = True
        return Appender(self)

    def expand(self, key: str, data: str) -> str:
        """A stored ``data`` column as the API shows it: a file reference becomes ``"text"``."""
        if f'"{FIELD}":' not in data:
            return data
        obj = json.loads(data)
        ref = obj.pop(FIELD, None)
        if not (isinstance(ref, list) and len(ref) == 2):
            return data
        body = self._read(key, int(ref[0]), int(ref[1])).decode("utf-8", "surrogatepass")
        head = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))[:-1]
        return f'{head}{"," if obj else ""}"text":"{body}"}}'

    def frame(self, key: str, data: str, at: str) -> list[bytes] | None:
        """The SSE ``data:`` payload of a file-backed row as bytes pieces, ``"at"`` first (as
        ``sse.with_time`` adds it); None for an inline row. Bytes all the way: a 256 KiB chunk
        is not decoded and encoded again per listener."""
        if f'"{FIELD}":' not in data:
            return None
        obj = json.loads(data)
        ref = obj.pop(FIELD, None)
        if not (isinstance(ref, list) and len(ref) == 2):
            return None
        body = self._read(key, int(ref[0]), int(ref[1]))
        head = json.dumps({"at": at, **obj}, ensure_ascii=False, separators=(",", ":"))[:-1]
        return [head.encode(), b',"text":"', body, b'"}']

    def _read(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
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
            os.close(fd)
        body = b"".join(parts)
        if length > 0:  # a short file (the disk lost its end): never end inside a character or an escape
            text = body.decode("utf-8", "ignore")
            for cut in range(min(len(text), 6) + 1):
                with contextlib.suppress(ValueError):
                    json.loads(f'"{text[:len(text) - cut]}"')
                    return text[:len(text) - cut].encode("utf-8", "surrogatepass")
            return b""
        return body

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
        return size, written

    def close(self) -> None:
        for fd, _size in self._open.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open.clear()
