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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import AgentKind, Invocation, JsonLinesParser, OutputParser, ParsedEvent, safe_id, safe_value


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

    def handle(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        kind = obj["type"]
        if kind == "thread.started":
            self.session_id = str(obj["thread_id"])
        elif kind == "turn.completed":
            usage = obj.get("usage") or {}
            inp, out = usage.get("input_tokens"), usage.get("output_tokens")
            total = inp + out if isinstance(inp, int) and isinstance(out, int) else None
            self.add_usage(input_tokens=inp, output_tokens=out, total_tokens=total,
                           cached_input_tokens=usage.get("cached_input_tokens"))
            self.error = None  # a completed turn outranks earlier transient stream errors
        elif kind == "turn.failed":
            err = obj.get("error")
            self.error = str(err.get("message", "")) if isinstance(err, dict) else "codex turn failed"
            return [ParsedEvent("error", {"message": self.error})]
        elif kind == "error":
            self.error = str(obj.get("message", "")) or "codex error"
            return [ParsedEvent("error", {"message": self.error})]
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
        if itype == "error" and done:
            return [ParsedEvent("error", {"message": str(item.get("message", ""))})]
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
              resume_id: str | None = None) -> Invocation:
        # --skip-git-repo-check: our workspaces are not necessarily git repositories.
        argv = [self.executable(command), "exec", "--json", "--skip-git-repo-check"]
        if model:
            argv.append(f"--model={safe_value(model)}")
        argv += args
        if resume_id:
            argv += ["resume", safe_id(resume_id)]
        argv.append("-")  # PROMPT "-": read the prompt from stdin
        return Invocation(argv=argv, stdin=prompt.encode())

    def parser(self) -> OutputParser:
        return CodexParser()
