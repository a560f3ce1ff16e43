"""The event writer's manners towards the loop: it steps aside from the write lock between
rows for anyone waiting, and checkpoints the WAL outside every lock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

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


async def test_the_wal_starts_over_though_the_loop_writes_during_every_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite rewinds the WAL only when a write begins with every frame copied; under load the
    loop commits during each checkpoint outside the lock, so without the short one under the
    lock the WAL grew by about 16 KB a commit for good (97 MB after 3,000 rows, reviewer's
    trickle). Here a loop-side commit lands right after every such checkpoint."""
    monkeypatch.setattr(writer_module, "CHECKPOINT_BYTES", 1)
    monkeypatch.setattr(writer_module, "RESTART_FRAMES", 32)
    db = Database(tmp_path / "r.db")
    db.execute("CREATE TABLE t (k TEXT, seq INTEGER, data TEXT, PRIMARY KEY (k, seq))")
    writer = db.writer()
    landed: list[int] = []
    stop, racing = threading.Event(), threading.Lock()

    class Racing:
        def __init__(self, conn: Any) -> None:
            self.conn = conn

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

        def execute(self, sql: str, *params: Any) -> Any:
            if "wal_checkpoint" not in sql or db.write_lock._held or stop.is_set():
                return self.conn.execute(sql, *params)
            begun, go = threading.Event(), threading.Event()

            def loop_side() -> None:  # a transaction begun before the checkpoint, committed after
                with db.transaction() as conn:
                    conn.execute("INSERT INTO t VALUES (?, ?, ?)", ("loop", len(landed), "y" * 100))
                    begun.set()
                    go.wait(10)
                landed.append(1)

            with racing:
                other = threading.Thread(target=loop_side)
                other.start()
                begun.wait(10)
                row = self.conn.execute(sql, *params).fetchone()
                go.set()
                other.join(10)
            return type("Done", (), {"fetchone": lambda _self: row})()

    writer._conn = Racing(writer._conn)
    for i in range(400):
        writer.put_statements([("INSERT INTO t VALUES (?, ?, ?)", (f"run_{i % 50}", i, "x" * 100))])
        while writer.rows_written <= i:
            await asyncio.sleep(0.0005)
    deadline = time.monotonic() + 10
    while len(landed) < 400 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    with racing:  # no loop-side commit in flight any more
        pass
    wal = (tmp_path / "r.db-wal").stat().st_size
    assert len(landed) >= 400
    assert wal < 1024 * 1024, f"the WAL never started over: {wal} bytes"
    assert db.one("SELECT COUNT(*) AS n FROM t")["n"] == 400 + len(landed)
    db.close()


async def test_the_loops_own_commits_are_checkpointed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection checkpoints on its own: commits made only on the loop (run states, new
    runs) must still reach the database file, or the WAL grows while no event is written."""
    monkeypatch.setattr(writer_module, "CHECKPOINT_S", 0.2)
    db = Database(tmp_path / "l.db")
    db.execute("CREATE TABLE t (i INTEGER)")
    writer = db.writer()
    calls: list[float] = []
    original = writer._checkpoint
    monkeypatch.setattr(writer, "_checkpoint", lambda: (calls.append(time.monotonic()), original()))
    await asyncio.sleep(0.5)
    assert calls == [], "nothing was written: nothing to checkpoint"
    for i in range(20):
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (?)", (i,))
    deadline = time.monotonic() + 10
    while not calls:
        assert time.monotonic() < deadline, "the loop's commits were never checkpointed"
        await asyncio.sleep(0.05)
    db.close()
