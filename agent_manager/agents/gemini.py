"""Gemini CLI (``@google/gemini-cli``) in headless ``stream-json`` mode.

Format source: google-gemini/gemini-cli ``packages/core/src/output/types.ts``
(``JsonStreamEventType``: init, message, tool_use, tool_result, error, result) and the
headless reference ``docs/cli/headless.md`` (exit codes 0, 1, 42, 53). A fatal error is a
``result`` event with ``status: "error"`` (``handleError`` in ``utils/errors.ts``).

Prompt passing: gemini parses argv with yargs. ``["-p", prompt]`` is unsafe — a prompt
``--yolo`` or ``-y`` becomes a flag and ``-p`` gets ``""`` (see isolation notes A.8). The
single token ``--prompt=<prompt>`` is taken by yargs as the value verbatim, whatever it
starts with, so that is the form used.

Checked against Gemini CLI 0.61.0: headless runs refuse a workspace that was never trusted
interactively (exit 55) unless ``GEMINI_CLI_TRUST_WORKSPACE=true``; the workspace is the
one the product chose for the run, so the kind sets it (an agent's own ``env`` may say
``false``). ``tool_result`` lines may carry no ``output``. Fatal errors exit with the codes
of ``FatalError`` subclasses in ``packages/core/src/utils/errors.ts`` (41 auth, 42 input,
44 sandbox, 52 config, 53 turn limit, 54 tool, 55 untrusted folder, 130 cancelled); an API
error exits with its HTTP status modulo 256 (400 → 144) and is in ``result.error``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
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
    strip_ansi,
)

# Read as the CLI's *system* settings (GEMINI_CLI_SYSTEM_SETTINGS_PATH) when the agent names a
# gateway: GOOGLE_GEMINI_BASE_URL alone makes the CLI pick auth "gateway", which headless mode
# rejects (exit 41); this file selects "gemini-api-key" and turns usage statistics off. The CLI
# skips a system settings file under a group/world-writable directory, so it ships with the
# package rather than being written to /tmp.
GATEWAY_SETTINGS = Path(__file__).with_name("gemini_gateway_settings.json")
EXIT_CODES = {
    41: "authentication failed or the auth method is not usable headless",
    42: "invalid input",
    44: "sandbox error",
    52: "invalid configuration",
    53: "the session reached its turn limit",
    54: "a tool failed fatally",
    55: "the workspace is not trusted",
    130: "cancelled",
}
_API_ERROR = re.compile(r"^\[API Error: (.*)\]$", re.S)


def _api_message(message: str) -> str:
    """``[API Error: {"error":{"message":…}}]`` → ``API Error: …`` (the provider's words)."""
    match = _API_ERROR.match(message.strip())
    if not match:
        return message
    try:
        err = as_dict(as_dict(json_text(match.group(1))).get("error"))
    except ValueError:
        return message
    if isinstance(err.get("message"), str):
        code = f" {err['code']}" if isinstance(err.get("code"), int) else ""
        return f"API Error{code}: {err['message']}"
    return message


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
            elif isinstance(obj.get("output"), str) and obj["output"]:
                data["output"] = obj["output"]
            if isinstance(obj.get("status"), str):
                data["status"] = obj["status"]  # real lines may say only this
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
                self.error = _api_message(message) or "gemini reported an error"
                return [ParsedEvent("error", {"message": self.error})]
        return []

    def failure(self, code: int | None, stderr_tail: str) -> str:
        """Fatal errors are printed to stderr in colour, before any JSON: the last stderr
        lines without escape codes, with what the exit code means."""
        lines = [ln.strip() for ln in strip_ansi(stderr_tail).splitlines() if ln.strip()]
        noise = ("Warning: 256-color", "Ripgrep is not available", "[STARTUP]", "    at ")
        useful = [ln for ln in lines if not ln.startswith(noise)]
        text = "\n".join(useful[-5:])[-4000:]
        meaning = EXIT_CODES.get(code or 0)
        if meaning:
            return f"{text}\n(gemini exit code {code}: {meaning})" if text else f"gemini exit code {code}: {meaning}"
        return text or f"exited with code {code}"


class GeminiKind(AgentKind):
    name = "gemini"
    title = "Gemini CLI"
    description = "Google's Gemini CLI, stream-json output, resumable sessions"
    default_command = "gemini"
    install_hint = "npm install -g @google/gemini-cli"
    supports_resume = True  # ``--resume <session id>`` (session id from the ``init`` event)
    auto_approve_flags = frozenset({"--yolo", "-y"})
    auto_approve_values = {"--approval-mode": frozenset({"yolo", "auto_edit"})}
    auto_approve_short = frozenset({"y"})
    streams_answer = True

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command), "--output-format", "stream-json"]
        if model:
            argv.append(f"--model={safe_value(model)}")
        if resume_id:
            argv.append(f"--resume={safe_id(resume_id)}")
        argv += args
        argv.append(f"--prompt={prompt}")  # one token: yargs never reads it as a flag
        env = {"GEMINI_CLI_TRUST_WORKSPACE": "true"}
        if gateway:
            env["GOOGLE_GEMINI_BASE_URL"] = gateway.base_url
            env["GEMINI_CLI_SYSTEM_SETTINGS_PATH"] = str(GATEWAY_SETTINGS)
            if gateway.api_key:
                env["GEMINI_API_KEY"] = gateway.api_key
        return Invocation(argv=argv, env=env)

    def parser(self) -> OutputParser:
        return GeminiParser()
