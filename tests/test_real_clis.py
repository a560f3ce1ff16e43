"""The real agent CLIs, as installed from npm and PyPI, driven through the product.

``scripts/install-agent-clis.sh`` (run by ``make test``) puts pinned versions in
``.cache/agent-clis``. Each CLI is registered as a user would — kind, the gateway fields,
nothing in ``args`` — and pointed at ``tests/fakes/model_api.py``, which speaks its model
API's wire format and streams a known answer in four chunks 250 ms apart. A CLI that is not
installed is skipped with the reason; everything else about it must work.

The streaming check compares the ``created_at`` of the run's ``message`` events with the
times the stub sent its chunks: a live stream has several message events before the stub's
last chunk; an answer relayed at the end has none.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import in_process_client, running_service
from fakes.model_api import ANSWER, ERROR_TEXT, TOOL_FILE, ModelStub
from helpers import events, wait_run

from agent_manager.settings import Settings
from agent_manager.workdirs import agent_workspace

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("AGENT_CLIS_DIR", REPO / ".cache" / "agent-clis"))
CLI_BIN = CACHE / "bin"
CLIS = ["claude", "codex", "gemini", "opencode", "aider"]
STREAMING = {"claude", "gemini", "aider"}  # docs/agents.md: codex and opencode print finished text only
RESUMING = {"claude", "codex", "gemini", "opencode"}
# The base URL each CLI's SDK expects (Anthropic and Gemini SDKs add the version path).
API_PATH = {"claude": "", "gemini": "", "codex": "/v1", "opencode": "/v1", "aider": "/v1"}
# Codex picks its tool set by model; with its default (unknown to the stub) it offers only a
# JavaScript "exec" tool, so the Codex agent names a model, as a gateway user would.
MODEL = {"codex": "gpt-5", "opencode": "stub-model", "aider": "stub-model"}
RUN_TIMEOUT = 120



def installed(cli: str) -> bool:
    return (CLI_BIN / cli).exists()


@pytest.fixture(params=CLIS)
def cli(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if not installed(name):
        missing(f"{name} is not installed in {CLI_BIN} (scripts/install-agent-clis.sh installs it)")
    return name


def missing(reason: str) -> None:
    """Skip on a developer's machine without the CLIs; in CI (where `make test` installs them)
    a missing CLI fails, so a broken install can never pass as a green run."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def stub() -> Iterator[ModelStub]:
    with ModelStub(delay=0.25) as server:
        yield server


@pytest.fixture
def real_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The service (and so every CLI) gets the real CLIs first on PATH and a HOME of its own.

    HOME is not under /tmp: Codex refuses to set up its sandbox helper below a world-writable
    directory, and Gemini ignores settings files there.
    """
    home = REPO / ".cache" / "real-cli-home" / uuid.uuid4().hex[:12]
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{CLI_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def api(tmp_path: Path, real_env: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    settings = Settings(home=tmp_path / "am", kill_grace_s=0.5)
    async with running_service(settings) as svc, in_process_client(settings, svc) as client:
        yield client, settings


async def register(client: httpx.AsyncClient, cli: str, stub: ModelStub, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name or f"real-{cli}", "kind": cli, "api_base": stub.url + API_PATH[cli],
                            "api_key": "sk-stub-" + uuid.uuid4().hex, "timeout_s": RUN_TIMEOUT}
    if cli in MODEL:
        body["model"] = MODEL[cli]
    r = await client.post("/api/agents", json=body)
    assert r.status_code == 201, r.text
    agent: dict[str, Any] = r.json()
    assert agent["api_key"] == "********" and agent["available"], agent
    return agent


async def run(client: httpx.AsyncClient, agent: str, prompt: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    r = await client.post("/api/runs", json={"agent": agent, "prompt": prompt})
    assert r.status_code == 201, r.text
    final = await wait_run(client, r.json()["id"], timeout=RUN_TIMEOUT + 30)
    return final, await events(client, final["id"])


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created_at"].replace("Z", "+00:00")).timestamp()


def workspace(settings: Settings, agent: dict[str, Any]) -> Path:
    path = agent_workspace(settings, agent)
    path.mkdir(parents=True, exist_ok=True)
    return path


def debug(final: dict[str, Any], evs: list[dict[str, Any]]) -> str:
    out = "".join(e["data"].get("text", "") for e in evs if e["type"] == "output")
    return f"run={final}\noutput={out[-3000:]}"


async def test_run_streams_the_answer(cli: str, stub: ModelStub, api: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = api
    agent = await register(client, cli, stub)
    stub.reset()
    final, evs = await run(client, agent["name"], "Say the answer.")
    assert final["status"] == "succeeded", debug(final, evs)
    assert final["output"] == ANSWER, debug(final, evs)
    assert final["usage"] and final["usage"]["input_tokens"] > 0 and final["usage"]["output_tokens"] > 0
    messages = [e for e in evs if e["type"] == "message"]
    assert "".join(m["data"]["text"] for m in messages).strip() == ANSWER
    streamed = stub.streamed()
    assert streamed, "the CLI never asked the stub for a streamed answer"
    last_chunk = streamed[-1].chunk_times[-1]
    early = [m for m in messages if stamp(m) < last_chunk]
    if cli in STREAMING:
        assert len(early) > 1, (cli, [stamp(m) for m in messages], streamed[-1].chunk_times)
    else:  # docs/agents.md says these cannot stream; if they ever do, the docs must change
        assert not early, f"{cli} streamed: update STREAMING and docs/agents.md"


async def test_two_turn_conversation_resumes(cli: str, stub: ModelStub,
                                             api: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = api
    agent = await register(client, cli, stub)
    conv = (await client.post("/api/conversations", json={"title": "t", "agent": agent["name"]})).json()
    runs = []
    for text in ("Remember the word PAPAYA-71.", "Which word did I ask you to remember?"):
        stub.reset()
        posted = (await client.post(f"/api/conversations/{conv['id']}/messages", json={"content": text})).json()
        final = await wait_run(client, posted["run"]["id"], timeout=RUN_TIMEOUT + 30)
        assert final["status"] == "succeeded", debug(final, await events(client, final["id"]))
        runs.append(final)
    # The model was sent the first turn again: by the CLI's own session, or our history.
    second = [e for e in stub.exchanges if e.mode == "answer"]
    assert second and "PAPAYA-71" in str(second[-1].body)
    queued = [e for e in await events(client, runs[1]["id"]) if e["type"] == "run.queued"][0]
    assert queued["data"]["resumed"] is (cli in RESUMING)
    if cli not in RESUMING:  # the history we sent holds the answers, not the CLI's noise
        body = str(second[-1].body)
        assert ANSWER in body and "Tokens:" not in body and "Aider v" not in body
    replies = [m for m in (await client.get(f"/api/conversations/{conv['id']}")).json()["messages"]
               if m["role"] == "assistant"]
    assert [m["content"] for m in replies] == [ANSWER, ANSWER]
    if cli == "codex":  # per-turn usage, not the thread's running total
        assert runs[1]["usage"]["input_tokens"] == runs[0]["usage"]["input_tokens"]


async def test_api_error_fails_the_run_with_the_providers_message(
        cli: str, stub: ModelStub, api: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = api
    agent = await register(client, cli, stub)
    conv = (await client.post("/api/conversations", json={"title": "t", "agent": agent["name"]})).json()
    posted = (await client.post(f"/api/conversations/{conv['id']}/messages",
                                json={"content": "STUB_ERROR please"})).json()
    final = await wait_run(client, posted["run"]["id"], timeout=RUN_TIMEOUT + 30)
    evs = await events(client, final["id"])
    assert final["status"] == "failed", debug(final, evs)
    assert "stub: the request was refused" in (final["error"] or ""), debug(final, evs)
    assert "\x1b" not in final["error"]
    assert final["output"] is None or ERROR_TEXT not in final["output"]
    assert not any("refused" in e["data"].get("text", "") for e in evs if e["type"] == "message")
    errors = [e for e in evs if e["type"] == "error"]
    assert len(errors) <= 1 + (cli == "gemini")  # one report (gemini may add a warning line)
    reply = [m for m in (await client.get(f"/api/conversations/{conv['id']}")).json()["messages"]
             if m["role"] == "assistant"][-1]["content"]
    assert reply.startswith("[failed]")  # recorded as a failure, not as the model's answer


async def test_tool_call(cli: str, stub: ModelStub, api: tuple[httpx.AsyncClient, Settings]) -> None:
    if cli == "aider":
        pytest.skip("aider has no tool calls: it edits files from the answer text")
    client, settings = api
    agent = await register(client, cli, stub)
    ws = workspace(settings, agent)
    (ws / TOOL_FILE).write_text("NOTE-CONTENT-123\n")
    stub.workdir = str(ws)
    final, evs = await run(client, agent["name"], "STUB_TOOL read the notes")
    assert final["status"] == "succeeded", debug(final, evs)
    tools = [e["data"] for e in evs if e["type"] == "tool"]
    assert tools and all(t["name"] for t in tools), debug(final, evs)
    assert any(TOOL_FILE in str(t.get("input")) for t in tools), tools
    if cli != "gemini":  # gemini's tool_result line carries no output
        assert any("NOTE-CONTENT-123" in str(t.get("output", "")) for t in tools), tools
    assert final["output"]


async def test_aider_prompt_starting_with_a_command_is_text(stub: ModelStub,
                                                             api: tuple[httpx.AsyncClient, Settings]) -> None:
    if not installed("aider"):
        missing("aider is not installed")
    client, settings = api
    agent = await register(client, "aider", stub)
    ws = workspace(settings, agent)
    for prompt in ("/run touch PWNED-RUN", "!touch PWNED-BANG"):
        stub.reset()
        final, evs = await run(client, agent["name"], prompt)
        assert final["status"] == "succeeded", debug(final, evs)
        assert prompt in str([e.body for e in stub.exchanges])  # the model got it as text
    conv = (await client.post("/api/conversations", json={"title": "t", "agent": agent["name"]})).json()
    posted = (await client.post(f"/api/conversations/{conv['id']}/messages",
                                json={"content": "/run touch PWNED-CHAT"})).json()
    assert (await wait_run(client, posted["run"]["id"], timeout=RUN_TIMEOUT + 30))["status"] == "succeeded"
    assert not list(ws.glob("PWNED*"))
    assert not (ws / ".git").exists()  # "create a git repo?" was answered no
