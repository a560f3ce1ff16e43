"""Conversations: CLI session resume where supported, a bounded history preamble elsewhere."""

from __future__ import annotations

import json

import httpx
from helpers import wait_run


async def say(client: httpx.AsyncClient, conv_id: str, content: str, agent: str | None = None) -> dict:
    body = {"content": content, **({"agent": agent} if agent else {})}
    r = await client.post(f"/api/conversations/{conv_id}/messages", json=body)
    assert r.status_code == 201, r.text
    posted = r.json()
    assert posted["message"]["role"] == "user" and posted["message"]["content"] == content
    return await wait_run(client, posted["run"]["id"])


async def test_resume_through_the_cli_session(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "cl", "kind": "claude"})
    conv = (await client.post("/api/conversations", json={"agent": "cl"})).json()
    first = await say(client, conv["id"], "my name is Ada")
    assert first["status"] == "succeeded" and "[resumed" not in first["output"]
    second = await say(client, conv["id"], "what is my name?")
    assert second["status"] == "succeeded" and "[resumed" in second["output"]
    full = (await client.get(f"/api/conversations/{conv['id']}")).json()
    assert [m["role"] for m in full["messages"]] == ["user", "assistant", "user", "assistant"]
    assert full["messages"][3]["content"] == second["output"]
    assert full["title"] == "my name is Ada"


async def test_history_preamble_for_cli_without_resume(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "dump", "command": "argv-dump"})
    conv = (await client.post("/api/conversations", json={"agent": "dump"})).json()
    await say(client, conv["id"], "first question")
    second = await say(client, conv["id"], "second question")
    prompt = json.loads(second["output"])["argv"][-1]
    assert "User: first question" in prompt and prompt.rstrip().endswith("User: second question")
    assert "Assistant:" in prompt
    # The run itself records what the user typed, not the preamble.
    assert second["prompt"] == "second question"


async def test_conversation_errors_and_search(client: httpx.AsyncClient) -> None:
    conv = (await client.post("/api/conversations", json={})).json()
    r = await client.post(f"/api/conversations/{conv['id']}/messages", json={"content": "hi"})
    assert r.status_code == 422 and "agent" in r.json()["error"]["message"]
    r = await client.post("/api/conversations/conv_nope/messages", json={"content": "hi", "agent": "x"})
    assert r.status_code == 404
    await client.post("/api/agents", json={"name": "e", "command": "echo"})
    await say(client, conv["id"], "talk about walruses", agent="e")
    found = (await client.get("/api/conversations", params={"q": "walrus"})).json()
    assert [c["id"] for c in found] == [conv["id"]]
    assert (await client.get("/api/conversations", params={"q": "narwhal"})).json() == []


async def test_runs_with_conversation_id_join_it(client: httpx.AsyncClient) -> None:
    await client.post("/api/agents", json={"name": "e", "command": "echo"})
    conv = (await client.post("/api/conversations", json={"agent": "e"})).json()
    r = await client.post("/api/runs", json={"agent": "e", "prompt": "via runs", "conversation_id": conv["id"]})
    await wait_run(client, r.json()["id"])
    messages = (await client.get(f"/api/conversations/{conv['id']}")).json()["messages"]
    assert [m["content"] for m in messages] == ["via runs", "via runs\n"]
