"""The event writer's manners towards the loop: it steps aside from the write lock between
rows for anyone waiting, and checkpoints the WAL outside every lock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from agent_manager.store import Database
from agent_manager.store import writer as writer_module
from agent_manager.store.database import WriteLock


def test_step_aside_lets_a_waiter_go_first_then_holds_the_lock_again() -> None:
    lock = WriteLock()
    order: list[str] = []
    lock.acquire()
    lock.step_aside()  # nobody waits: returns at once, still held
    waiter = threading.Thread(target=lambda: (lock.acquire(), order.append("waiter"), lock.release()))
    waiter.start()
    deadline = time.monotonic() + 10
    while not lock.wanted():
        assert time.monotonic() < deadline, "the waiter never waited"
        time.sleep(0.001)
    assert order == []
    lock.step_aside()
    order.append("holder")
    waiter.join(10)
    assert order == ["waiter", "holder"]
    assert not lock.wanted()
    lock.release()
    with lock:  # free again
        pass


async def test_a_transaction_waits_for_one_row_of_a_batch_not_the_whole_batch(tmp_path: Path) -> None:
    """Row 2 of a ten-row batch holds the writer until a transaction waits for the lock; that
    transaction must commit before the batch ends. Row 5 then fails once: the retry starts after
    the rows already committed (each row's insert lands exactly once)."""
    db = Database(tmp_path / "w.db")
    db.execute("CREATE TABLE t (i INTEGER PRIMARY KEY)")
    writer = db.writer()
    order: list[str] = []
    failed: list[int] = []

    def gate(i: int) -> int:
        order.append(f"row {i}")
        if i == 2:
            deadline = time.monotonic() + 10
            while not db.write_lock.wanted() and time.monotonic() < deadline:
                time.sleep(0.001)
        if i == 5 and not failed and "transaction" in order:
            failed.append(i)
            raise ValueError("once")
        return i

    writer._conn.create_function("gate", 1, gate)
    with db.write_lock:  # the ten rows go in one batch
        for i in range(10):
            writer.put_statements([("INSERT INTO t VALUES (?)", (i,)), ("SELECT gate(?)", (i,))])

    def loop_side() -> None:
        while "row 2" not in order:
            time.sleep(0.001)
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (100)")
            order.append("transaction")

    other = threading.Thread(target=loop_side)
    other.start()
    deadline = time.monotonic() + 30
    while writer.rows_written < 10:
        assert time.monotonic() < deadline, f"the batch never finished: {order}"
        await asyncio.sleep(0.01)
    other.join(10)
    assert order.index("transaction") < order.index("row 9"), order
    assert failed == [5]
    assert [r[0] for r in db.all("SELECT i FROM t ORDER BY i")] == [*range(10), 100]
    db.close()


async def test_checkpoints_run_outside_the_locks_and_no_commit_checkpoints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's automatic checkpoint runs inside a COMMIT (fsync and all) while the write lock is
    held; the writer turns it off and checkpoints between batches, where ``put`` and the loop's
    transactions go on meanwhile."""
    monkeypatch.setattr(writer_module, "CHECKPOINT_BYTES", 1)
    db = Database(tmp_path / "c.db")
    db.execute("CREATE TABLE t (i INTEGER)")
    writer = db.writer()
    assert writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    inside, release = threading.Event(), threading.Event()
    original = writer._checkpoint

    def slow_checkpoint() -> None:
        inside.set()
        release.wait(10)
        original()

    monkeypatch.setattr(writer, "_checkpoint", slow_checkpoint)
    writer.put_statements([("INSERT INTO t VALUES (1)", ())])
    assert await asyncio.to_thread(inside.wait, 10), "a busy writer did not checkpoint"
    writer.put_statements([("INSERT INTO t VALUES (2)", ())])  # the writer's own lock is free
    with db.transaction() as conn:  # and so is the write lock
        conn.execute("INSERT INTO t VALUES (3)")
    release.set()
    deadline = time.monotonic() + 10
    while writer.rows_written < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert sorted(r[0] for r in db.all("SELECT i FROM t")) == [1, 2, 3]
    db.close()
