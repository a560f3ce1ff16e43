"""A finished run's answer is indexed for search: a small one in the commit of its final row
(searchable the moment the run is finished), a large one on the writer thread."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from helpers import wait_run

from agent_manager import runs
from agent_manager.service import Service


async def test_a_small_answer_is_indexed_with_the_final_row_and_a_large_one_later(
        client: httpx.AsyncClient, service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    later: list[list[tuple[str, tuple[Any, ...]]]] = []
    real_commit_later = service.database.commit_later

    def recorded(statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        later.append(statements)
        real_commit_later(statements)
    monkeypatch.setattr(service.database, "commit_later", recorded)
    assert (await client.post("/api/agents", json={"name": "e", "command": "echo"})).status_code == 201
    small = (await client.post("/api/runs", json={"agent": "e", "prompt": "zebracrossing"})).json()
    await wait_run(client, small["id"])
    assert not any("runs_fts" in sql for statements in later for sql, _ in statements)
    page = (await client.get("/api/runs", params={"q": "zebracrossing"})).json()
    assert [r["id"] for r in page["items"]] == [small["id"]]  # found at once: no writer batch to wait for

    big_word = "x" * (runs.SEARCH_INLINE_CHARS + 10)
    big = (await client.post("/api/runs", json={"agent": "e", "prompt": f"unicornword {big_word}"})).json()
    await wait_run(client, big["id"])
    assert any("runs_fts" in sql and params[1] == big["id"] for statements in later for sql, params in statements)
