"""Runs end to end through the API: streaming, parsing, statuses, cancel, timeout, limits."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import in_process_client, running_service
from helpers import events, pids_with_marker, wait_gone, wait_run, wait_status

from agent_manager.models import OUTPUT_PREVIEW_CHARS
from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.store import runs as run_store

SLOW_LINES = ("import sys, time\n"
              "for i in range(int(sys.argv[1])):\n"
              "    print(f'line {i}', flush=True); time.sleep(float(sys.argv[2]))\n")
STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n")


async def add(client: httpx.AsyncClient, name: str, **fields: object) -> dict:
    r = await client.post("/api/agents", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def start(client: httpx.AsyncClient, agent: str, prompt: str, **extra: object) -> dict:
    r = await client.post("/api/runs", json={"agent": agent, "prompt": prompt, **extra})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize("prompt", ["--yolo", "-y", "x; touch /tmp/am-pwned-{m}", "$(touch /tmp/am-pwned-{m})",
                                    "a\nb --help", "'\"`"])
async def test_prompt_is_one_argv_element(client: httpx.AsyncClient, prompt: str) -> None:
    marker = uuid.uuid4().hex
    prompt = prompt.replace("{m}", marker)
    await add(client, "dump", kind="generic", command="argv-dump", args=["--fixed", "{prompt}", "tail"])
    run = await wait_run(client, (await start(client, "dump", prompt))["id"])
    assert run["status"] == "succeeded", run
    assert json.loads(run["output"])["argv"] == ["--fixed", prompt, "tail"]
    assert not Path(f"/tmp/am-pwned-{marker}").exists()


async def test_output_streams_before_the_process_exits(client: httpx.AsyncClient) -> None:
    await add(client, "slow", command=sys.executable, args=["-c", SLOW_LINES, "{prompt}", "0.3"])
    run = await start(client, "slow", "8")
    seen_running_with_output = False
    for _ in range(100):
        evs = await events(client, run["id"])
        status = (await client.get(f"/api/runs/{run['id']}")).json()["status"]
        if status == "running" and any(e["type"] == "output" for e in evs):
            seen_running_with_output = True
            break
        await asyncio.sleep(0.05)
    assert seen_running_with_output
    final = await wait_run(client, run["id"])
    texts = "".join(e["data"]["text"] for e in await events(client, run["id"]) if e["type"] == "output")
    assert texts == "".join(f"line {i}\n" for i in range(8))
    assert final["output"] == texts and final["exit_code"] == 0


async def test_structured_cli_output_is_parsed(client: httpx.AsyncClient) -> None:
    await add(client, "gem", kind="gemini")
    run = await wait_run(client, (await start(client, "gem", "hello TOOL"))["id"])
    assert run["status"] == "succeeded", run
    evs = await events(client, run["id"])
    types = [e["type"] for e in evs]
    assert types[0] == "run.queued" and types[1] == "run.started" and types[-1] == "run.finished"
    assert "message" in types and "tool" in types and "output" in types
    assert "hello TOOL" in run["output"]
    assert run["usage"] and run["usage"].get("total_tokens")
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))


async def test_cli_error_event_fails_the_run(client: httpx.AsyncClient) -> None:
    await add(client, "cl", kind="claude")
    run = await wait_run(client, (await start(client, "cl", "please FAIL"))["id"])
    assert run["status"] == "failed" and run["error"]


async def test_garbage_lines_still_pass_through(client: httpx.AsyncClient) -> None:
    await add(client, "cdx", kind="codex")
    run = await wait_run(client, (await start(client, "cdx", "GARBAGE please"))["id"])
    raw = "".join(e["data"]["text"] for e in await events(client, run["id"]) if e["type"] == "output")
    assert run["status"] == "succeeded"
    assert any(not line.startswith("{") for line in raw.splitlines() if line.strip())


async def test_stderr_is_the_error_when_cli_prints_nothing(client: httpx.AsyncClient) -> None:
    await add(client, "bad", command="sh", args=["-c", "echo 'no API key configured' >&2; exit 3", "sh"])
    run = await wait_run(client, (await start(client, "bad", "hi"))["id"])
    assert run["status"] == "failed" and run["exit_code"] == 3
    assert "no API key configured" in run["error"]


async def test_missing_executable_fails_with_error_event(client: httpx.AsyncClient) -> None:
    await add(client, "ghost", command="definitely-not-installed-cli")
    run = await wait_run(client, (await start(client, "ghost", "hi"))["id"])
    assert run["status"] == "failed" and "definitely-not-installed-cli" in run["error"]
    assert any(e["type"] == "error" for e in await events(client, run["id"]))


async def test_bad_run_requests(client: httpx.AsyncClient) -> None:
    await add(client, "e", command="echo")
    r = await client.post("/api/runs", json={"agent": "e", "prompt": "   "})
    assert r.status_code == 422 and "prompt" in r.json()["error"]["message"]
    r = await client.post("/api/runs", json={"agent": "nobody", "prompt": "x"})
    assert r.status_code == 404
    r = await client.post("/api/runs", json={"agent": "e", "prompt": "a\x00b"})
    assert r.status_code == 422
    r = await client.post("/api/runs", json={"agent": "e", "prompt": "x", "backend": "mainframe"})
    assert r.status_code == 422 and "backend" in r.json()["error"]["message"]


async def test_cancel_kills_the_whole_tree(client: httpx.AsyncClient) -> None:
    marker = f"am-tree-{uuid.uuid4().hex}"
    await add(client, "tree", command="tree-spawner", args=["--ignore-term"])
    run = await start(client, "tree", marker)
    await wait_status(client, run["id"], "running")
    for _ in range(100):
        if len(pids_with_marker(marker)) >= 4:
            break
        await asyncio.sleep(0.05)
    assert len(pids_with_marker(marker)) >= 4  # children, grandchild and the setsid escapee
    r = await client.post(f"/api/runs/{run['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert wait_gone(marker) == []
    again = await client.post(f"/api/runs/{run['id']}/cancel")  # idempotent
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_escalates_to_sigkill(client: httpx.AsyncClient) -> None:
    marker = f"am-stubborn-{uuid.uuid4().hex}"
    await add(client, "stubborn", command=sys.executable, args=["-c", STUBBORN, "{prompt}"])
    run = await start(client, "stubborn", marker)
    await wait_status(client, run["id"], "running")
    while not any(e["type"] == "output" for e in await events(client, run["id"])):
        await asyncio.sleep(0.05)
    final = (await client.post(f"/api/runs/{run['id']}/cancel")).json()
    assert final["status"] == "cancelled" and final["exit_code"] == -9
    assert wait_gone(marker) == []


async def test_timeout_kills_the_tree_and_says_so(client: httpx.AsyncClient) -> None:
    marker = f"am-timeout-{uuid.uuid4().hex}"
    await add(client, "tree", command="tree-spawner", args=["--ignore-term"], timeout_s=1)
    run = await wait_run(client, (await start(client, "tree", marker))["id"])
    assert run["status"] == "timed_out" and "timed out" in run["error"]
    assert wait_gone(marker) == []


async def test_background_child_does_not_outlive_the_run(client: httpx.AsyncClient) -> None:
    marker = f"am-bg-{uuid.uuid4().hex}"
    script = f"setsid sleep 300 {marker} >/dev/null 2>&1 < /dev/null & echo started"
    await add(client, "bg", command="sh", args=["-c", script.replace(marker, "$1"), "sh", "{prompt}"])
    run = await wait_run(client, (await start(client, "bg", marker))["id"])
    assert run["status"] == "succeeded"
    assert wait_gone(marker) == []


async def test_after_returns_exactly_the_rest(client: httpx.AsyncClient) -> None:
    await add(client, "slow", command=sys.executable, args=["-c", SLOW_LINES, "{prompt}", "0"])
    run = await wait_run(client, (await start(client, "slow", "20"))["id"])
    everything = await events(client, run["id"])
    rest = await events(client, run["id"], after=5)
    assert rest == everything[5:]
    r = await client.get(f"/api/runs/{run['id']}/events", headers={"Last-Event-ID": "7"})
    assert r.json() == everything[7:]


async def test_search_and_filters(client: httpx.AsyncClient) -> None:
    await add(client, "e", command="echo")
    await add(client, "bad", command="false")
    ok = await wait_run(client, (await start(client, "e", "zebra crossing"))["id"])
    failed = await wait_run(client, (await start(client, "bad", "unicorn"))["id"])
    page = (await client.get("/api/runs", params={"q": "zebra"})).json()
    assert [r["id"] for r in page["items"]] == [ok["id"]]
    page = (await client.get("/api/runs", params={"status": "failed"})).json()
    assert [r["id"] for r in page["items"]] == [failed["id"]]
    page = (await client.get("/api/runs", params={"agent": "e"})).json()
    assert page["total"] == 1
    page = (await client.get("/api/runs", params={"limit": 1})).json()
    assert page["total"] == 2 and len(page["items"]) == 1 and page["items"][0]["id"] == failed["id"]  # newest first


async def test_list_items_carry_the_answers_start_not_the_whole_answer(client: httpx.AsyncClient) -> None:
    """A page of fifty runs used to carry fifty whole answers (megabytes); now each carries its
    first OUTPUT_PREVIEW_CHARS characters and its length, and the run itself has the answer."""
    await add(client, "e", command="echo")
    long = await wait_run(client, (await start(client, "e", "é" * 700 + " zebra"))["id"])
    short = await wait_run(client, (await start(client, "e", "hi"))["id"])
    whole = (await client.get(f"/api/runs/{long['id']}")).json()["output"]
    assert whole.startswith("é" * 700) and "zebra" in whole
    for params in ({}, {"q": "zebra"}):
        items = {r["id"]: r for r in (await client.get("/api/runs", params=params)).json()["items"]}
        item = items[long["id"]]
        assert "output" not in item
        assert item["output_preview"] == whole[:OUTPUT_PREVIEW_CHARS] == "é" * OUTPUT_PREVIEW_CHARS
        assert item["output_chars"] == len(whole)
    items = {r["id"]: r for r in (await client.get("/api/runs")).json()["items"]}
    assert items[short["id"]]["output_preview"] == (await client.get(f"/api/runs/{short['id']}")).json()["output"]
    queued = await start(client, "e", "later")  # no answer yet: null, not ""
    listed = (await client.get("/api/runs", params={"limit": 1})).json()["items"][0]
    assert listed["id"] == queued["id"]
    if listed["status"] in ("queued", "running"):
        assert listed["output_preview"] is None and listed["output_chars"] is None
    await wait_run(client, queued["id"])


async def test_a_small_historys_list_read_on_the_loop_equals_the_read_pools(
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_manager.web.routers import runs as runs_router

    await add(client, "e", command="echo")
    for word in ("alpha", "beta", "gamma"):
        await wait_run(client, (await start(client, "e", word))["id"])
    asks = [{}, {"limit": 2}, {"offset": 1, "limit": 1}, {"status": "succeeded"}, {"agent": "e"}]
    on_loop = [(await client.get("/api/runs", params=ask)).json() for ask in asks]
    read = runs_router.run_store.search
    pooled: list[bool] = []

    def spy(db: object, **kw: object) -> object:
        pooled.append(type(db).__name__ == "Reader")
        return read(db, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(runs_router.run_store, "search", spy)
    assert [(await client.get("/api/runs", params=ask)).json() for ask in asks] == on_loop
    assert pooled == [False] * len(asks)  # a small history: on the loop
    monkeypatch.setattr(runs_router, "SMALL_HISTORY", 0)
    pooled.clear()
    assert [(await client.get("/api/runs", params=ask)).json() for ask in asks] == on_loop
    assert pooled == [True] * len(asks)  # past the limit: the read pool


@pytest.fixture
def limited(tmp_path: Path, fake_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", max_concurrent_runs=2, kill_grace_s=0.2)


async def test_concurrency_limit_queues_the_rest(limited: Settings) -> None:
    async with running_service(limited) as svc, in_process_client(limited, svc) as client:
        await add(client, "nap", command="sleep")
        runs = [await start(client, "nap", "0.4") for _ in range(5)]
        peak = 0
        while True:
            statuses = [(await client.get(f"/api/runs/{r['id']}")).json()["status"] for r in runs]
            peak = max(peak, statuses.count("running"))
            if all(s == "succeeded" for s in statuses):
                break
            await asyncio.sleep(0.02)
        assert peak == 2


async def test_unfinished_runs_become_interrupted_on_restart(settings: Settings) -> None:
    async with running_service(settings) as svc:
        run_store.create(svc.database, {"id": "run_stale1", "agent_id": "a", "agent_name": "a", "prompt": "p",
                                        "status": "running"})
        run_store.create(svc.database, {"id": "run_stale2", "agent_id": "a", "agent_name": "a", "prompt": "p"})
    async with running_service(settings) as again:
        for run_id in ("run_stale1", "run_stale2"):
            run = run_store.get(again.database, run_id)
            assert run["status"] == "interrupted" and "service stopped" in run["error"]
            assert again.runs.events.read(run_id)[-1]["type"] == "run.finished"


async def test_service_stop_ends_live_runs(settings: Settings) -> None:
    marker = f"am-stop-{uuid.uuid4().hex}"
    svc = Service(settings)
    await svc.start()
    async with in_process_client(settings, svc) as client:
        await add(client, "tree", command="tree-spawner")
        run = await start(client, "tree", marker)
        await wait_status(client, run["id"], "running")
        await svc.stop()
    assert wait_gone(marker) == []
    async with running_service(settings) as again:
        assert run_store.get(again.database, run["id"])["status"] == "interrupted"


async def test_stored_answer_is_capped_but_events_keep_everything(tmp_path: Path, fake_path: Path) -> None:
    cfg = Settings(home=tmp_path / "home", output_cap_bytes=2048)
    async with running_service(cfg) as svc, in_process_client(cfg, svc) as client:
        await add(client, "big", command=sys.executable, args=["-c", "print('x' * 10000)"])
        run = await wait_run(client, (await start(client, "big", "go"))["id"])
        assert run["output"].startswith("x" * 2048) and "truncated" in run["output"]
        assert len(run["output"]) < 2200
        raw = "".join(e["data"]["text"] for e in await events(client, run["id"]) if e["type"] == "output")
        assert raw == "x" * 10000 + "\n"
