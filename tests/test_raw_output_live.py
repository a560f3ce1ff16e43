"""Live readers near the end of a run get a file-backed row's bytes from memory
(``EventLog.printed``): the same bytes, in the same order, as a reader served from the file,
for every resume point, stream filter and byte offset; never before the row's commit; bounded."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from agent_manager import events
from agent_manager.store.database import Database
from agent_manager.store.output_files import SPILL_MIN_CHARS, OutputFiles
from agent_manager.web import raw_output, sse


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(tmp_path / "db.sqlite")
    database.migrate()
    yield database
    database.close()


def reading_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of every file read from now on (the loop's, or the read pool's)."""
    threads: list[str] = []
    real_read = OutputFiles._read

    def reading(self: OutputFiles, *args: object) -> bytes:
        threads.append(threading.current_thread().name)
        return real_read(self, *args)  # type: ignore[arg-type]
    monkeypatch.setattr(OutputFiles, "_read", reading)
    return threads


def big(i: int) -> str:
    return f"{i}:" + "é\"\\\t😀 line\n" * (SPILL_MIN_CHARS // 8 + i)


def fill(log: events.EventLog, key: str, n: int) -> str:
    """Output rows (small ones inline, big ones file-backed) and other events; returns the text."""
    printed = ""
    for i in range(n):
        if i % 5 == 4:
            log.append(key, "status", {"i": i})
            continue
        text = big(i) if i % 3 else f"small {i}\n"
        stream = "stderr" if i % 4 == 1 else "stdout"
        log.append(key, "output", {"stream": stream, "text": text})
        printed += text
    return printed


async def committed(log: events.EventLog, key: str) -> None:
    await log.drained(key)
    await asyncio.sleep(0)


async def raw(db: Database, log: events.EventLog, key: str, after: int = 0, stream: str | None = None,
              offset: int = 0) -> bytes:
    out = b""
    async for piece in raw_output.chunks(db, log, key, after, stream, offset):
        out += piece
    return out


def forget_memory(log: events.EventLog) -> None:
    log._printed.clear()
    log._printed_bytes = 0
    log._recent.clear()
    log._recent_bytes = 0


async def test_bytes_from_memory_equal_bytes_from_the_file(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    text = fill(log, "run_a", 30)
    log.append("run_a", "run.finished", {"status": "succeeded"})
    await committed(log, "run_a")
    assert log._printed["run_a"].bodies, "file-backed rows' bytes are kept after their commit"
    files = log.files
    assert files is not None
    for seq, body in log._printed["run_a"].bodies.items():
        row = db.one("SELECT data FROM run_events WHERE run_id = ? AND seq = ?", ("run_a", seq))
        assert row is not None and '"text_bytes":' in row["data"]
        assert files.path("run_a").read_bytes().count(body) >= 1

    last = log.committed_seq("run_a")
    cases = [(after, stream, offset) for after in (0, 1, 7, last - 1) for stream in (None, "stdout", "stderr")
             for offset in (0, 1, 5000, 10**9)]
    # From memory: the file is not read at all.
    reads: list[int] = []
    real_raw = OutputFiles.raw

    def counting(self: OutputFiles, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        reads.append(1)
        return real_raw(self, *args, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(OutputFiles, "raw", counting)
    from_memory = {case: await raw(db, log, "run_a", *case) for case in cases}
    assert not reads, "every file-backed row was in memory"
    assert from_memory[(0, None, 0)] == text.encode()
    forget_memory(log)
    for case, sent in from_memory.items():
        assert sent == await raw(db, log, "run_a", *case), case
    assert reads, "without the memory, the file is read"


async def test_sse_frames_from_memory_equal_frames_from_the_file(db: Database,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    fill(log, "run_b", 20)
    log.append("run_b", "run.finished", {"status": "succeeded"})
    await committed(log, "run_b")

    async def frames(after: int) -> bytes:
        out = b""
        async for piece in sse.frames(log, "run_b", after, lambda type_, _seq: type_ == "run.finished"):
            out += piece
        return out
    sent = {after: await frames(after) for after in (0, 3, 11)}
    forget_memory(log)
    threads = reading_threads(monkeypatch)
    for after, body in sent.items():  # not in memory, near the end of the file: read inline
        assert body == await frames(after), after
    assert threads and all(name == threading.current_thread().name for name in threads)
    threads.clear()
    from agent_manager.store import output_files
    monkeypatch.setattr(output_files, "DROP_LAG", 0)
    for after, body in sent.items():
        assert body == await frames(after), after
    # Far behind the end (the disk may be involved): read on the output-read threads, never on the loop.
    assert threads and all(name.startswith("am-output-read") for name in threads)


async def test_a_live_follower_catches_up_from_memory_and_from_the_file(db: Database,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that starts behind (its rows already left memory) reads the file, then follows
    from memory; the bytes are exactly what was printed."""
    monkeypatch.setattr(events, "PRINTED_KEY_BYTES", 3 * SPILL_MIN_CHARS)
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    early = fill(log, "run_c", 12)
    await committed(log, "run_c")
    assert log._printed["run_c"].size <= 3 * SPILL_MIN_CHARS
    assert min(log._printed["run_c"].bodies) > 2, "the first rows left memory"
    reader = asyncio.create_task(raw(db, log, "run_c"))
    later = ""
    for i in range(40):
        text = big(i) if i % 2 else f"live {i}\n"
        log.append("run_c", "output", {"stream": "stdout", "text": text})
        later += text
        if i % 3 == 0:
            await asyncio.sleep(0.002)
    log.append("run_c", "run.finished", {})
    assert await asyncio.wait_for(reader, 30) == (early + later).encode()


async def test_printed_bytes_are_never_served_before_their_commit(db: Database) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    log.append("run_d", "output", {"stream": "stdout", "text": "one\n"})
    await committed(log, "run_d")
    with db.write_lock:  # the writer thread cannot commit while we hold this
        seq = log.append("run_d", "output", {"stream": "stdout", "text": big(1)})
        await asyncio.sleep(0.05)
        assert log.printed("run_d", seq) is None
        reader = asyncio.create_task(raw(db, log, "run_d"))
        await asyncio.sleep(0.05)
        assert not reader.done()
    assert await log.wait("run_d", seq - 1, 10)
    assert log.printed("run_d", seq) == big(1).encode()
    log.append("run_d", "run.finished", {})
    assert await asyncio.wait_for(reader, 10) == ("one\n" + big(1)).encode()


async def test_printed_bytes_are_bounded_and_forgotten(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "PRINTED_KEY_BYTES", 4 * SPILL_MIN_CHARS)
    monkeypatch.setattr(events, "PRINTED_TOTAL_BYTES", 10 * SPILL_MIN_CHARS)
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    for key in ("k1", "k2", "k3", "k4"):
        for i in range(6):
            log.append(key, "output", {"stream": ("stdout", "stderr")[i % 2], "text": "x" * (SPILL_MIN_CHARS + i)})
        await committed(log, key)
        pieces = log._printed[key]
        assert pieces.size == sum(len(b) for b in pieces.bodies.values()) <= 4 * SPILL_MIN_CHARS
    assert log._printed_bytes == sum(p.size for p in log._printed.values()) <= 10 * SPILL_MIN_CHARS
    assert "k1" not in log._printed, "the least recently written key went first"
    log.append("k5", "output", {"stream": "stdout", "text": "y" * (5 * SPILL_MIN_CHARS)})  # larger than a key's share
    await committed(log, "k5")
    assert "k5" not in log._printed
    log.forget("k4")
    assert "k4" not in log._printed
    assert log._printed_bytes == sum(p.size for p in log._printed.values())


async def test_a_part_far_behind_the_end_is_read_on_a_thread(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part of the file more than ``DROP_LAG`` behind its end may have left the page cache:
    it is read on the output-read threads, never on the event loop; nearer parts are read inline.
    The bytes are the same, and a reader cancelled mid-read leaves no file open."""
    import os
    import threading

    from agent_manager.store import output_files

    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    text = fill(log, "run_t", 40)
    log.append("run_t", "run.finished", {})
    await committed(log, "run_t")
    forget_memory(log)
    threads = reading_threads(monkeypatch)
    monkeypatch.setattr(output_files, "DROP_LAG", 10**12)  # nothing is far behind
    assert await raw(db, log, "run_t") == text.encode()
    assert threads and all(name == threading.current_thread().name for name in threads)
    threads.clear()
    monkeypatch.setattr(output_files, "DROP_LAG", 0)  # everything is
    assert await raw(db, log, "run_t", offset=3) == text.encode()[3:]
    assert threads and all(name.startswith("am-output-read") for name in threads)

    opened: list[int] = []
    real_open = OutputFiles.open

    def tracking(self: OutputFiles, key: str) -> int | None:
        fd = real_open(self, key)
        if fd is not None:
            opened.append(fd)
        return fd
    monkeypatch.setattr(OutputFiles, "open", tracking)
    gen = raw_output.chunks(db, log, "run_t", 0, None, 0)
    while not opened:  # until a piece of the file is being sent
        assert await gen.__anext__()
    await gen.aclose()  # a client that went away
    path = str(OutputFiles.path(log.files, "run_t"))  # type: ignore[arg-type]

    def open_on_the_file() -> list[str]:
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}") == path:
                    found.append(name)
            except OSError:
                pass
        return found
    assert open_on_the_file() == []


async def test_a_reader_cancelled_during_a_thread_read_closes_the_file_after_it(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import threading

    from agent_manager.store import output_files

    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    fill(log, "run_u", 12)
    log.append("run_u", "run.finished", {})
    await committed(log, "run_u")
    forget_memory(log)
    monkeypatch.setattr(output_files, "DROP_LAG", 0)
    started = threading.Event()
    valid_after: list[bool] = []
    real_read = OutputFiles._read

    def slow(self: OutputFiles, key: str, offset: int, length: int, given: int | None = None) -> bytes:
        started.set()
        threading.Event().wait(0.2)
        try:
            os.fstat(given) if given is not None else None
            valid_after.append(True)
        except OSError:
            valid_after.append(False)
        return real_read(self, key, offset, length, given)
    monkeypatch.setattr(OutputFiles, "_read", slow)
    reader = asyncio.create_task(raw(db, log, "run_u"))
    while not started.is_set():
        await asyncio.sleep(0.005)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert valid_after == [True], "the fd stayed open until the thread's read was done"
