"""Output pipes of a host process (executors/pipes.py) and the writer's hand-off (store/writer.py).

Order across stdout and stderr, characters split between reads, both EOFs, bounded memory with
a consumer that does not read, a consumer behind the pipes when the process exits (nothing may
be abandoned), a process on a terminal, and the idle writer woken once per loop step.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from helpers import until

from agent_manager.executors import pipes as pipes_module
from agent_manager.executors.base import ExecSpec
from agent_manager.executors.local import LocalExecutor
from agent_manager.executors.pipes import LINGER_MAX_S, PENDING_LIMIT, READ_SIZE, OutputPipes, linger_s
from agent_manager.executors.process import ProcessExecution
from agent_manager.settings import Settings
from agent_manager.store.database import Database, now
from agent_manager.store.writer import Row


async def test_interleaving_is_arrival_order_and_same_stream_pieces_join(
        pipes: tuple[OutputPipes, int, int]) -> None:
    reader, out_w, err_w = pipes
    expected = 0
    for fd, text in ((out_w, "o1 "), (out_w, "o2 "), (err_w, "e1 "), (out_w, "o3 "), (err_w, "e2 "), (err_w, "e3 ")):
        os.write(fd, text.encode())
        expected += len(text)
        await until(lambda want=expected: reader.pending_bytes == want)  # read before the next
    chunks = reader.take()
    assert [(c.stream, c.text) for c in chunks] == [
        ("stdout", "o1 o2 "), ("stderr", "e1 "), ("stdout", "o3 "), ("stderr", "e2 e3 ")]
    assert reader.take() == []


async def test_a_character_split_between_reads_is_decoded_whole(pipes: tuple[OutputPipes, int, int]) -> None:
    reader, out_w, _ = pipes
    raw = "a€😀".encode()  # 1 + 3 + 4 bytes
    for cut in (2, 3, 5, 7):  # inside the euro sign, and the emoji at two places
        os.write(out_w, raw[:cut])
        await until(lambda cut=cut: reader.pending_bytes == cut)
        first = "".join(c.text for c in reader.take())
        os.write(out_w, raw[cut:])
        await until(lambda cut=cut: reader.pending_bytes == len(raw) - cut)
        rest = "".join(c.text for c in reader.take())
        assert first + rest == "a€😀" and "\ufffd" not in first + rest


async def test_both_eofs_end_the_output(pipes: tuple[OutputPipes, int, int]) -> None:
    reader, out_w, err_w = pipes
    os.write(out_w, b"bye\xe2\x82")  # ends inside a character: EOF flushes it as a replacement
    os.close(out_w)
    await asyncio.sleep(0.05)
    assert not reader.closed.done()  # stderr is still open
    os.write(err_w, b"last")
    os.close(err_w)
    await asyncio.wait_for(asyncio.shield(reader.closed), 5)
    reader.end()
    got = await reader.chunks()
    assert [(c.stream, c.text) for c in got] == [("stdout", "bye\ufffd"), ("stderr", "last")]
    assert await reader.chunks() == []


async def test_a_consumer_that_does_not_read_bounds_memory_and_loses_nothing(tmp_path: Path) -> None:
    total = 24 * 1024 * 1024
    script = "import os, sys\nblock = b'y' * 65536\nfor _ in range(int(sys.argv[1]) // 65536): os.write(1, block)\n"
    execution = await ProcessExecution.spawn([sys.executable, "-c", script, str(total)], env=dict(os.environ),
                                             cwd=str(tmp_path), stdin=None, tag="test-pipes:bound",
                                             kill_grace_s=0.3, stream_close_grace_s=0.5)
    pipes = execution._pipes
    await until(lambda: pipes.pending_bytes > PENDING_LIMIT)
    await asyncio.sleep(0.3)  # the writer is blocked, not buffered by us
    assert pipes.pending_bytes <= PENDING_LIMIT + READ_SIZE
    assert execution.proc.returncode is None
    received = 0
    async for chunk in execution.output():
        received += len(chunk.text)
        assert pipes.pending_bytes <= PENDING_LIMIT + 2 * READ_SIZE
    assert received == total
    assert await execution.wait() == 0


async def test_a_consumer_behind_when_the_process_exits_gets_every_byte(tmp_path: Path) -> None:
    """The grace and abandon times count only while the pipes are read: a run whose consumer
    waits (e.g. for the disk) longer than both must still get all of its output."""
    total = 2 * 1024 * 1024  # more than we hold pending, less than that plus a widened pipe: it exits
    script = "import os, sys\nblock = b'z' * 65536\nfor _ in range(int(sys.argv[1]) // 65536): os.write(1, block)\n"
    execution = await ProcessExecution.spawn([sys.executable, "-c", script, str(total)], env=dict(os.environ),
                                             cwd=str(tmp_path), stdin=None, tag="test-pipes:behind",
                                             kill_grace_s=0.2, stream_close_grace_s=0.2)
    output = execution.output()
    first = await output.__anext__()
    await asyncio.wait_for(execution.exited(), 10)
    await asyncio.sleep(2.0)  # longer than grace + abandon (0.2 + 1.0) with the pipe still full
    received = len(first.text)
    async for chunk in output:
        received += len(chunk.text)
    assert received == total
    assert await execution.wait() == 0


async def test_many_processes_read_at_once_make_a_consumer_linger_and_take_more_at_once(
        pipes: tuple[OutputPipes, int, int]) -> None:
    """200 chatty runs each line its own event kept the loop too busy to answer; with many
    processes read at once the consumer waits for company, so lines arrive in fewer chunks."""
    reader, out_w, err_w = pipes
    assert linger_s() == 0.0  # one process (a few tests' worth at most): no linger
    others = [os.pipe() for _ in range(250)]
    crowd = [OutputPipes({"stdout": r}) for r, _w in others]
    try:
        assert linger_s() == LINGER_MAX_S
        lines = [f"line {i}\n" for i in range(12)]

        async def write() -> None:
            for line in lines:
                os.write(out_w, line.encode())
                await asyncio.sleep(LINGER_MAX_S / 6)
            os.close(out_w)
            os.close(err_w)
        writing = asyncio.create_task(write())
        takes: list[str] = []
        while batch := await reader.chunks():
            takes += ["".join(c.text for c in batch)]
            if not reader.closed.done():
                continue
            reader.end()
        await writing
        assert "".join(takes) == "".join(lines)  # nothing lost, in order
        assert len(takes) <= len(lines) // 3, takes  # about six lines a take, not one
    finally:
        for crowd_reader, (_r, w) in zip(crowd, others, strict=True):
            crowd_reader.abandon()
            os.close(w)
    assert len(pipes_module._READING) <= 1  # closed readers are not counted


async def test_a_process_on_a_terminal_has_no_pipes(tmp_path: Path) -> None:
    executor = LocalExecutor(Settings(home=tmp_path / "home", kill_grace_s=0.3, stream_close_grace_s=0.5),
                             "test-pipes-pty")
    master, slave = os.openpty()
    try:
        execution = await executor.start(ExecSpec(argv=["sh", "-c", "echo on-the-tty; exit 3"], tty=slave,
                                                  workspace=tmp_path / "ws"))
        os.close(slave)
        chunks = [chunk async for chunk in execution.output()]  # ends: nothing comes through pipes
        assert chunks == []
        assert await asyncio.wait_for(execution.wait(), 10) == 3
        assert b"on-the-tty" in os.read(master, 4096)
    finally:
        os.close(master)
        await executor.close()


async def test_notes_keep_their_place_in_the_output(tmp_path: Path) -> None:
    execution = await ProcessExecution.spawn(
        [sys.executable, "-c", "import os, time; os.write(1, b'before\\n'); time.sleep(0.5); os.write(1, b'after\\n')"],
        env=dict(os.environ), cwd=str(tmp_path), stdin=None, tag="test-pipes:note", kill_grace_s=0.3,
        stream_close_grace_s=0.5)
    output = execution.output()
    first = await output.__anext__()
    assert first.text == "before\n"
    await execution.note("stderr", "[note]\n")
    rest: list[list[str]] = []
    async for chunk in output:  # a later read may split "after\n": join what each stream said in a row
        if rest and rest[-1][0] == chunk.stream:
            rest[-1][1] += chunk.text
        else:
            rest.append([chunk.stream, chunk.text])
    assert rest == [["stderr", "[note]\n"], ["stdout", "after\n"]]


async def test_the_idle_writer_is_woken_once_per_loop_step(tmp_path: Path) -> None:
    db = Database(tmp_path / "am.db")
    db.migrate()
    writer = db.writer()
    committed: list[Row] = []
    try:
        await until(lambda: writer._idle)
        before = writer.commits
        for seq in range(1, 101):  # one step of the loop: no await in between
            writer.put(Row("run_events", "run_id", "run_w", seq, "output", {"stream": "stdout", "text": "x"},
                           now(), 129, committed.append))
        await until(lambda: len(committed) == 100)
        assert writer.commits == before + 1
        assert db.one("SELECT COUNT(*) AS n FROM run_events WHERE run_id = 'run_w'")["n"] == 100  # type: ignore[index]
    finally:
        db.close()


def test_now_is_iso_utc_with_milliseconds() -> None:
    before = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    stamp = now()
    after = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert before <= stamp <= after
    assert len(stamp) == len("2026-11-28T07:30:00.123Z") and stamp.endswith("Z")
    assert datetime.fromisoformat(stamp).tzinfo is not None
