"""OpenAI Codex CLI (``@openai/codex``) via ``codex exec --json``.

Format source: openai/codex ``codex-rs/exec/src/exec_events.rs`` (``ThreadEvent``:
thread.started {thread_id}, turn.started, turn.completed {usage: input_tokens,
cached_input_tokens, output_tokens}, turn.failed {error: {message}}, item.started /
item.updated / item.completed {item: {id, type, ...}}, error {message}; item types
agent_message, reasoning, command_execution, file_change, mcp_tool_call, web_search,
todo_list, error). Arguments: ``codex-rs/exec/src/cli.rs`` — ``exec [OPTIONS] [PROMPT]``
and ``exec resume [SESSION_ID] [PROMPT]``; "If not provided as an argument (or if ``-`` is
used), instructions are read from stdin".

Prompt passing: stdin, with ``-`` as the PROMPT positional. Nothing the prompt contains
ever reaches clap, and there is no per-argument size limit (argv elements are capped at
128 KiB on Linux).

Checked against Codex 0.171.0: the answer arrives only as the finished ``agent_message``
item (no text deltas on the ``--json`` stream); ``turn.completed.usage`` on a resumed thread
is the thread's running total, not the turn's; an ``item.completed`` item of type ``error``
is a non-fatal warning ("a non-fatal error surfaced as an item", e.g. unknown model
metadata); an API error arrives as an ``error`` event and again as ``turn.failed``, each
with the provider's raw JSON body as the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent_manager.text import json_text

from .base import (
    AgentKind,
    Gateway,
    Invocation,
    JsonLinesParser,
    OutputParser,
    ParsedEvent,
    as_dict,
    safe_id,
    safe_value,
)

GATEWAY_PROVIDER = "agent_manager_gateway"
GATEWAY_KEY_ENV = "AGENT_MANAGER_GATEWAY_API_KEY"
USAGE_KEYS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens")


def _api_message(raw: str) -> str:
    """The message inside a provider's raw JSON error body, else ``raw`` as it is."""
    try:
        body = json_text(raw)
    except ValueError:
        return raw
    err = as_dict(as_dict(body).get("error"))
    if isinstance(err.get("message"), str) and err["message"]:
        return f"API error: {err['message']}"
    return raw


def _mcp_output(item: dict[str, Any]) -> str:
    err = item.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    result = item.get("result")
    if isinstance(result, dict) and isinstance(result.get("content"), list):
        return "".join(c.get("text", "") for c in result["content"] if isinstance(c, dict))
    return ""


@dataclass
class CodexParser(JsonLinesParser):
    """The last ``agent_message`` is the answer; tools are command/MCP/file/web items."""

    _started: set[str] = field(default_factory=set)
    # The thread's running totals before this run (from the conversation's previous turn).
    _before: dict[str, int] = field(default_factory=dict)

    def resumed(self, previous_usage: dict[str, Any] | None) -> None:
        thread = as_dict(as_dict(previous_usage).get("thread"))
        self._before = {k: v for k, v in thread.items() if isinstance(v, int) and not isinstance(v, bool)}

    def handle(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        kind = obj["type"]
        if kind == "thread.started":
            self.session_id = str(obj["thread_id"])
        elif kind == "turn.completed":
            self._turn_usage(as_dict(obj.get("usage")))
            self.error = None  # a completed turn outranks earlier transient stream errors
        elif kind in ("turn.failed", "error"):
            err = obj.get("error")
            raw = (err.get("message", "") if isinstance(err, dict) else "") if kind == "turn.failed" \
                else obj.get("message", "")
            message = _api_message(str(raw)) or f"codex {kind.replace('.', ' ')}"
            if message == self.error:  # the same API error, reported a second time
                return []
            self.error = message
            return [ParsedEvent("error", {"message": message})]
        elif kind in ("item.started", "item.completed"):
            return self._item(obj["item"], done=kind == "item.completed")
        return []

    def _item(self, item: dict[str, Any], done: bool) -> list[ParsedEvent]:
        itype, item_id = item.get("type"), str(item.get("id", ""))
        if itype == "agent_message":
            if not done or not isinstance(item.get("text"), str):
                return []
            self.final_answer = item["text"]
            return [ParsedEvent("message", {"text": item["text"], "delta": False})]
        if itype == "error" and done:  # non-fatal by Codex's own definition
            return [ParsedEvent("warning", {"message": str(item.get("message", ""))})]
        tool = self._tool(item)
        if tool is None:
            return []
        name, tool_input, output = tool
        data: dict[str, Any] = {"name": name, "id": item_id}
        if not done:
            self._started.add(item_id)
            data["input"] = tool_input
            return [ParsedEvent("tool", data)]
        if item_id not in self._started:  # completed-only items (file_change) carry their input
            data["input"] = tool_input
        data["output"] = output
        if item.get("status") in ("failed", "declined"):
            data["is_error"] = True
        if "exit_code" in item:
            data["exit_code"] = item["exit_code"]
        return [ParsedEvent("tool", data)]

    def _turn_usage(self, usage: dict[str, Any]) -> None:
        """This turn's usage: the reported running total minus the thread's total before it.

        The running total is kept in ``usage["thread"]`` so the next resumed turn can do the
        same subtraction.
        """
        totals = {k: usage[k] for k in USAGE_KEYS if isinstance(usage.get(k), int)}
        thread = as_dict(as_dict(self.usage).get("thread"))
        before = {**self._before, **{k: v for k, v in thread.items() if isinstance(v, int)}}
        turn = {k: max(0, v - before.get(k, 0)) for k, v in totals.items()}
        if "input_tokens" in turn and "output_tokens" in turn:
            turn["total_tokens"] = turn["input_tokens"] + turn["output_tokens"]
        self.add_usage(**turn)
        assert self.usage is not None
        self.usage["thread"] = totals

    @staticmethod
    def _tool(item: dict[str, Any]) -> tuple[str, Any, str] | None:
        itype = item.get("type")
        if itype == "command_execution":
            output = str(item.get("aggregated_output", ""))
            return "command_execution", {"command": item.get("command")}, output
        if itype == "mcp_tool_call":
            return f"{item.get('server')}.{item.get('tool')}", item.get("arguments"), _mcp_output(item)
        if itype == "file_change":
            return "file_change", {"changes": item.get("changes")}, str(item.get("status", ""))
        if itype == "web_search":
            return "web_search", {"query": item.get("query")}, ""
        return None


class CodexKind(AgentKind):
    name = "codex"
    title = "Codex CLI"
    description = "OpenAI's Codex CLI (codex exec --json), resumable sessions"
    default_command = "codex"
    install_hint = "npm install -g @openai/codex"
    supports_resume = True  # ``codex exec resume <thread_id>``
    auto_approve_flags = frozenset({"--dangerously-bypass-approvals-and-sandbox", "--yolo", "--full-auto"})
    auto_approve_values = {
        "--sandbox": frozenset({"danger-full-access"}),
        "-s": frozenset({"danger-full-access"}),
        "--ask-for-approval": frozenset({"never"}),
        "-a": frozenset({"never"}),
    }

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        # --skip-git-repo-check: our workspaces are not necessarily git repositories.
        argv = [self.executable(command), "exec", "--json", "--skip-git-repo-check",
                "-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false"]
        env: dict[str, str] = {}
        if gateway:
            # A provider of our own through `-c` overrides (TOML values), not a config.toml
            # in a separate CODEX_HOME: the thread store stays where `resume` finds it.
            table = f"model_providers.{GATEWAY_PROVIDER}"
            argv += ["-c", f"model_provider={GATEWAY_PROVIDER}",
                     "-c", f"{table}.name=" + json.dumps("gateway"),
                     "-c", f"{table}.base_url=" + json.dumps(gateway.base_url),
                     "-c", f"{table}.wire_api=responses"]
            if gateway.api_key:
                argv += ["-c", f"{table}.env_key={GATEWAY_KEY_ENV}"]
                env[GATEWAY_KEY_ENV] = gateway.api_key
        if model:
            argv.append(f"--model={safe_value(model)}")
        argv += args
        if resume_id:
            argv += ["resume", safe_id(resume_id)]
        argv.append("-")  # PROMPT "-": read the prompt from stdin
        return Invocation(argv=argv, stdin=prompt.encode(), env=env)

    def parser(self) -> OutputParser:
        return CodexParser()
