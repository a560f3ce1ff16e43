"""opencode (``opencode-ai``) via ``opencode run --format json``.

Format source: sst/opencode ``packages/opencode/src/cli/cmd/run.ts`` — with
``--format json`` every line is ``{type, timestamp, sessionID, ...}`` where type is
``step_start`` / ``step_finish`` (``part.tokens``, ``part.cost``), ``text`` (``part.text``),
``reasoning``, ``tool_use`` (``part.tool``, ``part.callID``, ``part.state`` with
``input``/``output``/``error``/``status``), ``error`` (``error.name``,
``error.data.message``) and ``done``. ``--session <id>`` continues a session.

Prompt passing: stdin. ``run`` joins its positional words with spaces and wraps any word
containing a space in double quotes, so an argv prompt would not arrive unchanged; piped
stdin is used verbatim when no message words are given.

Checked against opencode 1.18.33: ``run --format json`` prints each part once it is
finished, so an answer arrives whole (no text deltas). A gateway becomes a provider of our
own in ``OPENCODE_CONFIG_CONTENT`` (merged over the user's config), served by the bundled
``@ai-sdk/openai-compatible`` package.
"""

from __future__ import annotations

import json
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
)

GATEWAY_PROVIDER = "gateway"
GATEWAY_KEY_ENV = "AGENT_MANAGER_GATEWAY_API_KEY"


class OpencodeParser(JsonLinesParser):
    """The last ``text`` part is the answer; ``step_finish`` parts carry tokens and cost."""

    def handle(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        if isinstance(obj.get("sessionID"), str) and obj["sessionID"]:
            self.session_id = obj["sessionID"]
        kind, part = obj["type"], obj.get("part")
        if kind == "text" and isinstance(part, dict) and isinstance(part.get("text"), str):
            self.final_answer = part["text"]
            return [ParsedEvent("message", {"text": part["text"], "delta": False})]
        if kind == "tool_use" and isinstance(part, dict):
            state = as_dict(part.get("state"))
            data: dict[str, Any] = {"name": str(part.get("tool", "")), "id": str(part.get("callID", "")),
                                    "input": state.get("input")}
            if state.get("status") == "error":
                data["output"], data["is_error"] = str(state.get("error", "")), True
            else:
                data["output"] = state.get("output", "")
            return [ParsedEvent("tool", data)]
        if kind == "step_finish" and isinstance(part, dict):
            tokens = as_dict(part.get("tokens"))
            cache = as_dict(tokens.get("cache"))
            inp, out = tokens.get("input"), tokens.get("output")
            total = inp + out if isinstance(inp, int) and isinstance(out, int) else None
            self.add_usage(input_tokens=inp, output_tokens=out, total_tokens=total,
                           reasoning_tokens=tokens.get("reasoning"), cache_read_tokens=cache.get("read"),
                           cache_write_tokens=cache.get("write"), cost_usd=part.get("cost"))
            return []
        if kind == "error":
            err = as_dict(obj.get("error"))
            data_ = as_dict(err.get("data"))
            self.error = str(data_.get("message") or err.get("name") or "opencode error")
            return [ParsedEvent("error", {"message": self.error})]
        return []


class OpencodeKind(AgentKind):
    name = "opencode"
    title = "opencode"
    description = "The opencode CLI (opencode run --format json)"
    default_command = "opencode"
    install_hint = "npm install -g opencode-ai"
    supports_resume = True  # ``--session <sessionID>``
    auto_approve_flags = frozenset({"--auto", "--yolo", "--dangerously-skip-permissions"})

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command), "run", "--format", "json"]
        env = {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1",
               "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}
        if model:
            safe_value(model)
        if gateway:
            env.update(self.gateway_environment(gateway, model))
        elif model:
            argv.append(f"--model={model}")
        if resume_id:
            argv.append(f"--session={safe_id(resume_id)}")
        argv += args
        return Invocation(argv=argv, stdin=prompt.encode(), env=env)

    @staticmethod
    def gateway_environment(gateway: Gateway, model: str | None) -> dict[str, str]:
        """A ``gateway`` provider with the agent's model (``default`` when it names none)
        selected; the key is referenced as ``{env:…}`` so it never sits in the config text."""
        name = (model or "default").removeprefix(f"{GATEWAY_PROVIDER}/")
        options: dict[str, Any] = {"baseURL": gateway.base_url}
        env = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1"}
        if gateway.api_key:
            options["apiKey"] = "{env:" + GATEWAY_KEY_ENV + "}"
            env[GATEWAY_KEY_ENV] = gateway.api_key
        config = {"provider": {GATEWAY_PROVIDER: {"npm": "@ai-sdk/openai-compatible", "name": "Gateway",
                                                  "options": options, "models": {name: {"name": name}}}},
                  "model": f"{GATEWAY_PROVIDER}/{name}"}
        env["OPENCODE_CONFIG_CONTENT"] = json.dumps(config)
        return env

    def parser(self) -> OutputParser:
        return OpencodeParser()
