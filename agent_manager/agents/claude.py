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

Streaming (checked against Claude Code 2.1.197): ``-p`` prints the assistant's text only
once a content block is finished, unless ``--include-partial-messages`` is given; then the
raw Messages API stream arrives as ``{"type":"stream_event","event":{...}}`` lines, the text
in ``content_block_delta`` / ``text_delta`` events, and the finished ``assistant`` message
follows as before (so its text is not shown a second time).

API errors: the CLI prints a synthetic assistant message (``"model":"<synthetic>"``, text
``API Error: 400 …``) and then ``result`` with ``is_error: true``. That text is the run's
error, not an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    text_of,
)


@dataclass
class ClaudeParser(JsonLinesParser):
    """The ``result`` event is authoritative for the answer, cost and error state."""

    _tools: dict[str, str] = field(default_factory=dict)
    _streamed: set[str] = field(default_factory=set)  # message ids whose text arrived as deltas
    _current: str = ""  # id of the message being streamed
    _synthetic: list[str] = field(default_factory=list)  # the CLI's own "API Error: …" texts

    def handle(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        kind = obj["type"]
        if isinstance(obj.get("session_id"), str) and obj["session_id"]:
            self.session_id = obj["session_id"]
        if kind == "stream_event" and obj.get("parent_tool_use_id") is None:
            return self._stream_event(as_dict(obj.get("event")))
        if kind == "assistant":
            message = obj["message"]
            if message.get("model") == "<synthetic>":  # the CLI speaking, not the model
                self._synthetic.extend(b["text"] for b in message.get("content") or []
                                       if isinstance(b, dict) and isinstance(b.get("text"), str))
                return []
            streamed = str(message.get("id", "")) in self._streamed
            return self._assistant(message.get("content"), show_text=not streamed)
        if kind == "user":
            return self._tool_results(obj["message"].get("content"))
        if kind == "result":
            return self._result(obj)
        return []

    def _stream_event(self, event: dict[str, Any]) -> list[ParsedEvent]:
        """Messages API stream events: only text deltas become (delta) message events."""
        etype = event.get("type")
        if etype == "message_start":
            self._current = str(as_dict(event.get("message")).get("id", ""))
            return []
        delta = as_dict(event.get("delta"))
        if etype == "content_block_delta" and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            if not delta["text"]:
                return []
            self._streamed.add(self._current)
            self.answer_parts.append(delta["text"])
            return [ParsedEvent("message", {"text": delta["text"], "delta": True})]
        return []

    def _assistant(self, content: Any, show_text: bool = True) -> list[ParsedEvent]:
        events: list[ParsedEvent] = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                if show_text:
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
            self.error = detail or "; ".join(self._synthetic) or f"claude: {obj.get('subtype', 'error')}"
            self.answer_parts.clear()  # whatever streamed before the failure is not an answer
            return [ParsedEvent("error", {"message": self.error})]
        if isinstance(result, str):
            self.final_answer = result
        return []


class ClaudeKind(AgentKind):
    name = "claude"
    title = "Claude Code"
    description = "Anthropic's Claude Code CLI, stream-json output, resumable sessions"
    default_command = "claude"
    install_hint = "npm install -g @anthropic-ai/claude-code"
    supports_resume = True  # ``--resume <session_id>`` from the init/result events
    auto_approve_flags = frozenset({"--dangerously-skip-permissions", "--allow-dangerously-skip-permissions"})
    auto_approve_values = {"--permission-mode": frozenset({"bypassPermissions", "acceptEdits"})}
    streams_answer = True

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command), "-p", "--output-format", "stream-json", "--verbose",
                "--include-partial-messages"]
        if model:
            argv.append(f"--model={safe_value(model)}")
        if resume_id:
            argv.append(f"--resume={safe_id(resume_id)}")
        argv += args
        argv += ["--", prompt]  # after "--" commander never reads it as an option
        return Invocation(argv=argv, env=self.environment(gateway))

    @staticmethod
    def environment(gateway: Gateway | None) -> dict[str, str]:
        """No self-update, telemetry or error reports from a managed, headless CLI; the
        gateway as ``ANTHROPIC_BASE_URL`` (the SDK appends ``/v1/messages``)."""
        env = {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        if gateway:
            env["ANTHROPIC_BASE_URL"] = gateway.base_url
            if gateway.api_key:
                env["ANTHROPIC_API_KEY"] = gateway.api_key
        return env

    def parser(self) -> OutputParser:
        return ClaudeParser()
