"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_manager.store import database
from agent_manager.store.database import Database

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "interrupted"}


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until ``check()`` holds, polling every 5 ms (an assertion after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def wait_run(client: httpx.AsyncClient, run_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = (await client.get(f"/api/runs/{run_id}")).json()
        if run["status"] in TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")
        await asyncio.sleep(0.05)


async def wait_status(client: httpx.AsyncClient, run_id: str, status: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get(f"/api/runs/{run_id}")).json()["status"] != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} never reached {status}")
        await asyncio.sleep(0.05)


def pids_with_marker(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def wait_gone(marker: str, timeout: float = 5) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := pids_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


async def events(client: httpx.AsyncClient, run_id: str, after: int = 0) -> list[dict[str, Any]]:
    r = await client.get(f"/api/runs/{run_id}/events", params={"after": after})
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()
    return result


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by prometheus_client's own parser: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def old_database(path: Path, monkeypatch: pytest.MonkeyPatch, before: int) -> Database:
    """A database as a release before migration ``before`` left it, with one agent (``agt_1``):
    rows can be written the old way, and its next ``migrate()`` applies the rest."""
    every = database.migrations()
    monkeypatch.setattr(database, "migrations", lambda: [m for m in every if m[0] < before])
    db = Database(path)
    db.migrate()
    db.execute("INSERT INTO agents (id, name, kind, command, args, env, trusted, created_at, updated_at)"
               " VALUES ('agt_1', 'a', 'generic', 'echo', '[]', '{}', 1, 'x', 'x')")
    monkeypatch.setattr(database, "migrations", lambda: every)
    return db
