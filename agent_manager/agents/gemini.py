"""Gemini CLI (``@google/gemini-cli``) in headless ``stream-json`` mode.

Format source: google-gemini/gemini-cli ``packages/core/src/output/types.ts``
(``JsonStreamEventType``: init, message, tool_use, tool_result, error, result) and the
headless reference ``docs/cli/headless.md`` (exit codes 0, 1, 42, 53). A fatal error is a
``result`` event with ``status: "error"`` (``handleError`` in ``utils/errors.ts``).

Prompt passing: gemini parses argv with yargs. ``["-p", prompt]`` is unsafe — a prompt
``--yolo`` or ``-y`` becomes a flag and ``-p`` gets ``""`` (see isolation notes A.8). The
single token ``--prompt=<prompt>`` is taken by yargs as the value verbatim, whatever it
starts with, so that is the form used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import AgentKind, Invocation, JsonLinesParser, OutputParser, ParsedEvent, safe_id, safe_value


@dataclass
class GeminiParser(JsonLinesParser):
    """Assistant ``message`` chunks make up the answer; ``result`` carries stats and status."""

    _tools: dict[str, str] = field(default_factory=dict)

    def handle(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        kind = obj["type"]
        if kind == "init":
            if isinstance(obj.get("session_id"), str):
                self.session_id = obj["session_id"]
            return []
        if kind == "message":
            if obj.get("role") != "assistant" or not isinstance(obj.get("content"), str):
                return []
            self.answer_parts.append(obj["content"])
            return [ParsedEvent("message", {"text": obj["content"], "delta": bool(obj.get("delta"))})]
        if kind == "tool_use":
            name = str(obj.get("tool_name", ""))
            tool_id = str(obj.get("tool_id", ""))
            self._tools[tool_id] = name
            return [ParsedEvent("tool", {"name": name, "id": tool_id, "input": obj.get("parameters")})]
        if kind == "tool_result":
            tool_id = str(obj.get("tool_id", ""))
            data: dict[str, Any] = {"name": self._tools.get(tool_id, ""), "id": tool_id}
            if obj.get("status") == "error":
                err = obj.get("error") or {}
                data["output"] = obj.get("output") or (err.get("message") if isinstance(err, dict) else "")
                data["is_error"] = True
            else:
                data["output"] = obj.get("output", "")
            return [ParsedEvent("tool", data)]
        if kind == "error":
            message = str(obj.get("message", ""))
            if obj.get("severity") != "warning":
                self.error = message
            return [ParsedEvent("error", {"message": message, "severity": obj.get("severity", "error")})]
        if kind == "result":
            stats = obj.get("stats")
            if isinstance(stats, dict):
                self.add_usage(
                    input_tokens=stats.get("input_tokens"),
                    output_tokens=stats.get("output_tokens"),
                    total_tokens=stats.get("total_tokens"),
                    cached_tokens=stats.get("cached"),
                    duration_ms=stats.get("duration_ms"),
                    tool_calls=stats.get("tool_calls"),
                )
            if obj.get("status") == "error":
                err = obj.get("error")
                message = str(err.get("message", "")) if isinstance(err, dict) else "gemini reported an error"
                self.error = message or "gemini reported an error"
                return [ParsedEvent("error", {"message": self.error})]
        return []


class GeminiKind(AgentKind):
    name = "gemini"
    default_command = "gemini"
    install_hint = "npm install -g @google/gemini-cli"
    supports_resume = True  # ``--resume <session id>`` (session id from the ``init`` event)
    auto_approve_flags = frozenset({"--yolo", "-y"})
    auto_approve_values = {"--approval-mode": frozenset({"yolo", "auto_edit"})}
    auto_approve_short = frozenset({"y"})

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None) -> Invocation:
        argv = [self.executable(command), "--output-format", "stream-json"]
        if model:
            argv.append(f"--model={safe_value(model)}")
        if resume_id:
            argv.append(f"--resume={safe_id(resume_id)}")
        argv += args
        argv.append(f"--prompt={prompt}")  # one token: yargs never reads it as a flag
        return Invocation(argv=argv)

    def parser(self) -> OutputParser:
        return GeminiParser()
