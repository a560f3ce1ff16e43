"""The in-memory tail of committed rows (``EventLog._recent``) serves live readers exactly what the
table would: same rows, same order, same SSE bytes (file-backed output included), never a row
before its commit, and bounded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent_manager import events
from agent_manager.store.database import Database
from agent_manager.store.output_files import SPILL_MIN_CHARS
from agent_manager.web import sse


def table_rows(log: events.EventLog, key: str, after: int, limit: int) -> list[tuple[int, str, str, str]]:
    rows = log.db.all("SELECT seq, type, data, created_at FROM run_events WHERE run_id = ? AND seq > ?"
                      " ORDER BY seq LIMIT ?", (key, after, limit))
    return [(r["seq"], r["type"], r["data"], r["created_at"]) for r in rows]


async def committed(log: events.EventLog, key: str) -> None:
    await log.drained(key)
    await asyncio.sleep(0)


async def sse_bytes(log: events.EventLog, key: str, after: int) -> bytes:
    out = b""
    async for piece in sse.frames(log, key, after, lambda type_, _seq: type_ == "run.finished"):
        out += piece
    return out


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(tmp_path / "db.sqlite")
    database.migrate()
    yield database
    database.close()


def fill(log: events.EventLog, key: str, n: int) -> None:
    for i in range(n):
        if i % 7 == 3:  # large enough for the run's output file: a file-backed row
            log.append(key, "output", {"stream": "stdout", "text": f"{i}:" + "é\"\\\t" * (SPILL_MIN_CHARS // 4 + 1)})
        elif i % 5 == 0:
            log.append(key, "status", {"i": i})
        else:
            log.append(key, "output", {"stream": "stderr" if i % 2 else "stdout", "text": f"line {i}\n"})


async def test_tail_reads_equal_table_reads_for_every_resume_point(db: Database) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    fill(log, "run_a", 40)
    await committed(log, "run_a")
    last = log.committed_seq("run_a")
    assert last >= 20
    assert log._recent["run_a"].rows, "the committed rows are in the tail"
    for after in range(0, last + 2):
        for limit in (1, 3, 64):
            assert log.read_raw("run_a", after, limit) == table_rows(log, "run_a", after, limit), (after, limit)
    assert any('"text_bytes"' in row[2] for row in log.read_raw("run_a", 0, 100)), "file-backed rows covered"
    # read() decodes the same rows (file-backed text spliced back in)
    assert [e["seq"] for e in log.read("run_a", 5, 10)] == [r[0] for r in table_rows(log, "run_a", 5, 10)]
    assert all(isinstance(e["data"].get("text", ""), str) for e in log.read("run_a", 0, 100))


async def test_sse_bytes_from_the_tail_equal_those_from_the_table(db: Database,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that connects mid-run and one that resumes (Last-Event-ID = after) get the same
    frames, byte for byte, as a reader that only has the table."""
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    fill(log, "run_b", 30)
    log.append("run_b", "run.finished", {"status": "succeeded"})
    await committed(log, "run_b")
    last = log.committed_seq("run_b")
    from_tail = {after: await sse_bytes(log, "run_b", after) for after in (0, 1, 9, last - 1)}
    log._recent.clear()
    log._recent_bytes = 0
    for after, sent in from_tail.items():
        assert sent == await sse_bytes(log, "run_b", after), after
    assert b"event: run.finished" in from_tail[9]


async def test_a_live_listener_gets_every_event_in_order(db: Database) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    log.append("run_c", "status", {"i": -1})
    await committed(log, "run_c")

    async def producer() -> None:
        for i in range(200):
            log.append("run_c", "output", {"stream": "stdout", "text": f"{i}\n"})
            if i % 13 == 0:
                await asyncio.sleep(0.001)
        log.append("run_c", "run.finished", {})

    listener = asyncio.create_task(sse_bytes(log, "run_c", 1))  # connected after the first event
    await producer()
    live = await asyncio.wait_for(listener, 30)
    log._recent.clear()
    log._recent_bytes = 0
    assert live == await sse_bytes(log, "run_c", 1)
    text = b"".join(line for line in live.split(b"\n") if line.startswith(b"data: "))
    assert text.count(b"\\n") == 200


async def test_a_row_is_never_read_before_its_commit(db: Database) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True)
    log.append("run_d", "output", {"stream": "stdout", "text": "one\n"})
    await committed(log, "run_d")
    assert [r[0] for r in log.read_raw("run_d", 0)] == [1]
    with db.write_lock:  # the writer thread cannot commit the next row while we hold this
        seq = log.append("run_d", "output", {"stream": "stdout", "text": "two\n"})
        await asyncio.sleep(0.05)
        assert log.read_raw("run_d", 0) == log.read_raw("run_d", 0, 64)
        assert [r[0] for r in log.read_raw("run_d", 0)] == [1], "not committed: nobody may see it"
        assert log.read_raw("run_d", 1) == []
        assert all(row[0] < seq for row in log._recent["run_d"].rows)
    assert await log.wait("run_d", 1, 10)
    assert [r[0] for r in log.read_raw("run_d", 0)] == [1, 2]


async def test_a_direct_append_inside_an_open_transaction_is_not_served_early(db: Database) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True)
    log.append("run_e", "output", {"stream": "stdout", "text": "a"})
    await committed(log, "run_e")
    with pytest.raises(RuntimeError), db.transaction():
        log.append("run_e", "run.started", {}, direct=True)
        assert "run_e" not in log._recent, "uncommitted: the tail is dropped, the table decides"
        raise RuntimeError("rolled back")
    assert [r[0] for r in log.read_raw("run_e", 0)] == [1]


async def test_the_tail_is_bounded_and_forgotten(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "RECENT_KEY_BYTES", 1500)
    monkeypatch.setattr(events, "RECENT_TOTAL_BYTES", 4000)
    monkeypatch.setattr(events, "RECENT_KEYS", 3)
    log = events.EventLog(db, "run_events", "run_id", batched=True)
    for key in ("k1", "k2", "k3", "k4"):
        for i in range(30):
            log.append(key, "status", {"i": i})
            await committed(log, key)
    assert len(log._recent) <= 3 and "k1" not in log._recent
    assert log._recent_bytes == sum(r.size for r in log._recent.values()) <= 4000
    assert all(r.size <= 1500 for r in log._recent.values())
    assert log._recent["k4"].rows[0][0] > 1, "older rows left the tail"
    for key in ("k1", "k4"):  # outside or partly outside the tail: read from the table
        for after in (0, 5, 29, 30):
            assert log.read_raw(key, after, 64) == table_rows(log, key, after, 64)
    log.forget("k4")
    assert "k4" not in log._recent
    assert log._recent_bytes == sum(r.size for r in log._recent.values())


async def test_a_reader_at_the_committed_end_costs_no_query(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True)
    log.fresh("run_f")  # a new run: no MAX(seq) query either
    assert log.append("run_f", "run.queued", {}) == 1
    await committed(log, "run_f")
    log._recent.clear()  # not from the tail: from knowing the committed seq

    def no_query(*_args: object) -> None:
        raise AssertionError("queried the table")
    monkeypatch.setattr(db, "all", no_query)
    assert log.read_raw("run_f", 1) == []  # the live readers' path (read(), the JSON list, asks the table)
    monkeypatch.undo()
    assert [r[0] for r in log.read_raw("run_f", 0)] == [1]


async def test_wait_times_out_and_wakes(db: Database) -> None:
    log = events.EventLog(db, "run_events", "run_id", batched=True)
    log.fresh("run_g")
    assert await log.wait("run_g", 0, 0.05) is False
    waiter = asyncio.create_task(log.wait("run_g", 0, 10))
    await asyncio.sleep(0.01)
    log.append("run_g", "status", {})
    assert await asyncio.wait_for(waiter, 10) is True
    assert log.read_raw("run_g", 0)[0][0] == 1


async def test_a_row_committed_but_not_yet_announced_is_read_by_a_json_reader(db: Database) -> None:
    """A client that saw a run end in its row (GET /api/runs/{id}) and then lists its events got
    the list without the last rows when the loop had not yet heard of their commit (1 run in 10
    of tests/test_run_limits.py)."""
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    fill(log, "run_b", 5)
    await committed(log, "run_b")
    before = log.committed_seq("run_b")
    log.append("run_b", "run.finished", {"status": "succeeded"})
    await asyncio.sleep(0)  # the writer is woken once per loop step
    other = Database(db.path)
    try:  # the loop is blocked here, so the writer's announcement cannot run yet
        for _ in range(2000):
            if other.one("SELECT 1 AS x FROM run_events WHERE run_id = 'run_b' AND type = 'run.finished'"):
                break
            time.sleep(0.005)
        assert log.committed_seq("run_b") == before, "the announcement ran: nothing tested"
        assert [e["type"] for e in log.read("run_b", before)] == ["run.finished"]
    finally:
        other.close()
