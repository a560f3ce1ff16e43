"""Claude Code (``@anthropic-ai/claude-code``) in print mode with ``stream-json`` output.

Format source: the Claude Code / Agent SDK ``SDKMessage`` shapes — ``system`` (subtype
``init``, ``session_id``), ``assistant`` / ``user`` wrapping Anthropic Messages API
``message`` objects (``text``, ``tool_use``, ``tool_result`` blocks), and ``result`` with
``subtype`` (success | error_max_turns | error_during_execution | ...), ``is_error``,
``result``, ``total_cost_usd``, ``usage``. ``--output-format stream-json`` with ``-p``
requires ``--verbose``.

Prompt passing: claude parses argv with commander, where a positional prompt that starts
with ``-`` is read as an (unknown) option (anthropics/claude-code#25925). After ``--``
commander takes everything as positional, so the prompt goes last, after ``--`` (the fix
used by claude-agent-sdk-python#130 and others).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import (
    AgentKind,
    Invocation,
    JsonLinesParser,
    OutputParser,
    ParsedEvent,
    as_dict,
    safe_id,
    safe_value,
    text_of,
)


@dataclass
class ClaudeParser(JsonLinesParser):
    """The ``result`` event is authoritative for the answer, cost and error state."""

    _tools: dict[str, str] = field(default_factory=dict)

    def handle(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        kind = obj["type"]
        if isinstance(obj.get("session_id"), str) and obj["session_id"]:
            self.session_id = obj["session_id"]
        if kind == "assistant":
            return self._assistant(obj["message"].get("content"))
        if kind == "user":
            return self._tool_results(obj["message"].get("content"))
        if kind == "result":
            return self._result(obj)
        return []

    def _assistant(self, content: Any) -> list[ParsedEvent]:
        events: list[ParsedEvent] = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                self.answer_parts.append(block["text"])
                events.append(ParsedEvent("message", {"text": block["text"], "delta": False}))
            elif block.get("type") == "tool_use":
                tool_id = str(block.get("id", ""))
                self._tools[tool_id] = str(block.get("name", ""))
                events.append(ParsedEvent("tool", {
                    "name": self._tools[tool_id], "id": tool_id, "input": block.get("input")}))
        return events

    def _tool_results(self, content: Any) -> list[ParsedEvent]:
        events: list[ParsedEvent] = []
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                tool_id = str(block.get("tool_use_id", ""))
                data: dict[str, Any] = {"name": self._tools.get(tool_id, ""), "id": tool_id,
                                        "output": text_of(block.get("content"))}
                if block.get("is_error"):
                    data["is_error"] = True
                events.append(ParsedEvent("tool", data))
        return events

    def _result(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        usage = as_dict(obj.get("usage"))
        counts = {k: usage.get(k) for k in ("input_tokens", "output_tokens",
                                           "cache_creation_input_tokens", "cache_read_input_tokens")}
        numbers = [v for v in counts.values() if isinstance(v, int)]
        self.add_usage(**counts, total_tokens=sum(numbers) if numbers else None,
                       cost_usd=obj.get("total_cost_usd"), num_turns=obj.get("num_turns"),
                       duration_ms=obj.get("duration_ms"))
        result = obj.get("result")
        if obj.get("is_error") or obj.get("subtype", "success") != "success":
            errors = obj.get("errors")
            detail = result if isinstance(result, str) and result else (
                "; ".join(str(e) for e in errors) if isinstance(errors, list) and errors else "")
            self.error = detail or f"claude: {obj.get('subtype', 'error')}"
            return [ParsedEvent("error", {"message": self.error})]
        if isinstance(result, str):
            self.final_answer = result
        return []


class ClaudeKind(AgentKind):
    name = "claude"
    default_command = "claude"
    install_hint = "npm install -g @anthropic-ai/claude-code"
    supports_resume = True  # ``--resume <session_id>`` from the init/result events
    auto_approve_flags = frozenset({"--dangerously-skip-permissions", "--allow-dangerously-skip-permissions"})
    auto_approve_values = {"--permission-mode": frozenset({"bypassPermissions", "acceptEdits"})}

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None) -> Invocation:
        argv = [self.executable(command), "-p", "--output-format", "stream-json", "--verbose"]
        if model:
            argv.append(f"--model={safe_value(model)}")
        if resume_id:
            argv.append(f"--resume={safe_id(resume_id)}")
        argv += args
        argv += ["--", prompt]  # after "--" commander never reads it as an option
        return Invocation(argv=argv)

    def parser(self) -> OutputParser:
        return ClaudeParser()
