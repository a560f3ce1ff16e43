"""Lone surrogates ("\\ud800" in JSON) from an agent: stored as U+FFFD, and the service keeps
storing every run's events. The first one used to end the event writer's thread, and no run
of the service finished after it."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from helpers import events, wait_run

from agent_manager.agents.base import json_object
from agent_manager.store.database import Database
from agent_manager.text import unicode_only

# A CLI printing Claude Code's stream-json, whose texts hold lone surrogates (JavaScript can cut
# a string between the halves of a pair; JSON.stringify writes each half as an escape).
HOSTILE_CLAUDE = r'''
import json, sys
def emit(obj): sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
emit({"type": "system", "subtype": "init", "session_id": "s1", "model": "m", "cwd": "/", "tools": []})
text = "bad \ud800 half \udcff end \ud83d\ude00"
emit({"type": "assistant", "session_id": "s1", "message": {"id": "msg_1", "type": "message",
      "role": "assistant", "model": "m", "content": [{"type": "text", "text": text}],
      "usage": {"input_tokens": 1, "output_tokens": 1}}})
emit({"type": "result", "subtype": "success", "is_error": False, "duration_ms": 1, "result": text,
      "session_id": "s1", "total_cost_usd": 0.0, "usage": {"input_tokens": 1, "output_tokens": 1}})
'''


async def test_an_agent_printing_lone_surrogates_finishes_and_so_do_later_runs(
        client: httpx.AsyncClient, tmp_path: Path) -> None:
    script = tmp_path / "hostile_claude.py"
    script.write_text(f"#!{sys.executable}\n{HOSTILE_CLAUDE}")
    script.chmod(0o755)
    r = await client.post("/api/agents", json={"name": "cl", "kind": "claude", "command": str(script)})
    assert r.status_code == 201, r.text
    r = await client.post("/api/runs", json={"agent": "cl", "prompt": "hi", "backend": "local"})
    run = await wait_run(client, r.json()["id"])
    assert run["status"] == "succeeded", (run["error"], run["exit_code"])
    assert run["output"] == "bad \ufffd half \ufffd end \U0001F600"
    messages = [e["data"]["text"] for e in await events(client, run["id"]) if e["type"] == "message"]
    assert messages and all("\ufffd" in m for m in messages)
    listed = (await client.get("/api/runs", params={"q": "half"})).json()
    assert [item["output_preview"] for item in listed["items"]] == [run["output"]]

    r = await client.post("/api/agents", json={"name": "sh", "command": "sh", "args": ["-c", "echo after", "sh"]})
    r = await client.post("/api/runs", json={"agent": "sh", "prompt": "x", "backend": "local"})
    after = await wait_run(client, r.json()["id"])
    assert (after["status"], after["output"]) == ("succeeded", "after\n")


def test_json_lines_lose_only_lone_surrogates() -> None:
    obj = json_object(r'{"type": "t", "a": ["\ud800x", {"\udfff": "\ud83d\ude00"}], "b": "\\ud800"}')
    assert obj == {"type": "t", "a": ["\ufffdx", {"\ufffd": "\U0001F600"}], "b": "\\ud800"}
    assert unicode_only(("é\udc80", 1, None)) == ("é\ufffd", 1, None)


async def test_the_event_writer_outlives_text_that_is_not_unicode(tmp_path: Path) -> None:
    """Defense behind the parsers: whatever source a lone surrogate comes from (a backend, a
    plugin's parser), the writer stores U+FFFD and goes on."""
    db = Database(tmp_path / "db.sqlite")
    db.migrate()
    writer = db.writer()
    writer.put_statements([("CREATE TABLE notes (x TEXT)", ())])
    writer.put_statements([("INSERT INTO notes VALUES (?)", ("a\ud800b",))])
    writer.put_statements([("INSERT INTO notes VALUES (?)", ("next",))])
    db.close()
    db = Database(tmp_path / "db.sqlite")
    assert [r["x"] for r in db.all("SELECT x FROM notes")] == ["a\ufffdb", "next"]
    db.close()




def test_provider_errors_inside_cli_output_lose_lone_surrogates() -> None:
    """The error a run ends with is stored on the loop's own connection (not the writer's): an
    error body quoted by Codex or Gemini CLI must not carry a lone surrogate either."""
    from agent_manager.agents import codex, gemini

    assert codex._api_message(r'{"error": {"message": "quota \ud800 gone"}}') == "API error: quota \ufffd gone"
    assert gemini._api_message(r'[API Error: {"error": {"code": 429, "message": "slow \udfff down"}}]') == \
        "API Error 429: slow \ufffd down"
