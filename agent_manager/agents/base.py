"""What every agent kind provides: how to invoke its CLI headlessly and how to read its output.

A kind never runs anything itself. It turns (command, args, model, prompt, resume id) into
an ``Invocation`` and offers a fresh ``OutputParser`` per run, which turns the CLI's own
structured output into ``message`` / ``tool`` / ``error`` events and remembers the final
answer, the usage and the CLI's session id (for resuming a conversation).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_manager.errors import ValidationFailed
from agent_manager.models import Stream
from agent_manager.text import json_text

PROMPT_TOKEN = "{prompt}"
# A generic agent's args element that becomes the path of a file holding the prompt (the path
# as the agent sees it on its backend; the run layer writes the file and fills the path in).
PROMPT_FILE_TOKEN = "{prompt_file}"
# One JSON line longer than this cannot be a CLI event worth parsing: it is skipped (its raw
# bytes are still in the output events) instead of growing the parser's buffer without end.
MAX_LINE_CHARS = 8 * 1024 * 1024


@dataclass
class Invocation:
    """The argv to execute (prompt as exactly one element) or the prompt on stdin.

    ``env`` holds what the kind itself needs in the CLI's environment: its quieting switches
    and the translation of the agent's gateway. The agent's own ``env`` is laid over it, so a
    user can still override any of these by name.
    """

    argv: list[str]
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Positions in argv to replace by the prompt file's path, and the text that file holds.
    prompt_file_at: tuple[int, ...] = ()
    prompt_file: str | None = None


@dataclass(frozen=True)
class Gateway:
    """The agent's own model endpoint: the base URL its CLI's SDK takes, and the key for it.

    Each kind turns this into its CLI's own mechanism (environment variables, config
    overrides, flags). The key only ever travels in the environment, never in argv.
    """

    base_url: str
    api_key: str | None = None

    @classmethod
    def of(cls, agent: dict[str, Any]) -> Gateway | None:
        base = agent.get("api_base")
        return cls(str(base), agent.get("api_key") or None) if base else None


@dataclass
class ParsedEvent:
    """A structured event: ``message`` {text, delta?}, ``tool`` {name, input?, output?},
    ``error`` {message}, or ``warning`` {message} (something the CLI reported that did not
    fail the run)."""

    type: Literal["message", "tool", "error", "warning"]
    data: dict[str, Any]


@dataclass
class OutputParser:
    """Line-oriented parser base: subclasses implement ``parse_line``.

    Chunks arrive split anywhere; this base keeps the partial last line per stream.
    Unparseable lines simply produce no event (the raw ``output`` event already carries them).
    """

    answer_parts: list[str] = field(default_factory=list)
    final_answer: str | None = None
    usage: dict[str, Any] | None = None
    session_id: str | None = None
    error: str | None = None
    _partial: dict[str, str] = field(default_factory=dict)

    _skipping: dict[str, bool] = field(default_factory=dict)

    def feed(self, stream: Stream, text: str) -> list[ParsedEvent]:
        buffered = self._partial.get(stream, "") + text
        *lines, rest = buffered.split("\n")
        if self._skipping.get(stream) and lines:  # the end of an oversized line: drop it
            lines.pop(0)
            self._skipping[stream] = False
        if len(rest) > MAX_LINE_CHARS:
            rest, self._skipping[stream] = "", True
        self._partial[stream] = rest
        events: list[ParsedEvent] = []
        for line in lines:
            events.extend(self.parse_line(stream, line))
        return events

    def close(self) -> list[ParsedEvent]:
        events: list[ParsedEvent] = []
        for stream, rest in list(self._partial.items()):
            if rest:
                events.extend(self.parse_line(stream, rest))  # type: ignore[arg-type]
        self._partial.clear()
        return events

    def parse_line(self, stream: Stream, line: str) -> list[ParsedEvent]:
        return []

    def resumed(self, previous_usage: dict[str, Any] | None) -> None:
        """Told, before a resumed turn starts, what the conversation's last turn reported.

        For CLIs whose usage is a running total over the session (Codex), so this turn's
        own usage can be told apart from the earlier turns'.
        """

    def failure(self, code: int | None, stderr_tail: str) -> str:
        """The error of a failed run when the output said none: the CLI's last stderr,
        stripped of terminal colour codes, or the exit code."""
        text = strip_ansi(stderr_tail).strip()
        return text[-4000:] if text else f"exited with code {code}"

    @property
    def answer(self) -> str | None:
        """The assistant's final answer, if the CLI's format says what it is."""
        if self.final_answer is not None:
            return self.final_answer
        return "".join(self.answer_parts) if self.answer_parts else None


class PlainTextParser(OutputParser):
    """For CLIs that print the answer as plain text: the answer is stdout, kept up to
    ``limit`` characters so a runaway output cannot grow the service's memory."""

    limit: int = 1_048_576
    kept: int = 0
    truncated: bool = False

    def feed(self, stream: Stream, text: str) -> list[ParsedEvent]:
        if stream == "stdout" and not self.truncated:
            room = self.limit - self.kept
            if len(text) > room:
                text, self.truncated = text[:room], True
            self.answer_parts.append(text)
            self.kept += len(text)
        return []

    def close(self) -> list[ParsedEvent]:
        return []


class AgentKind:
    """Base for one CLI kind. Subclasses set the class attributes and ``build``."""

    name: str = ""
    title: str = ""  # shown in the UI's choices
    description: str = ""
    default_command: str = ""
    install_hint: str = ""
    supports_resume: bool = False
    # Arguments that put the CLI in an auto-approve mode; routing treats such runs as untrusted.
    auto_approve_flags: frozenset[str] = frozenset()
    # Flags whose value decides whether they auto-approve, e.g. {"--approval-mode": {"yolo"}}.
    auto_approve_values: dict[str, frozenset[str]] = {}
    # Single-letter auto-approve flags that may appear bundled (``-sy``), e.g. {"y"}.
    auto_approve_short: frozenset[str] = frozenset()
    # Auto-approve flags the CLI's parser also accepts abbreviated (Python argparse's
    # ``allow_abbrev``), with the shortest prefix it takes, e.g. {"--yes-always": 3}.
    auto_approve_abbrev: dict[str, int] = {}
    # Whether the CLI shows the answer while the model is still writing it (docs/agents.md).
    streams_answer: bool = False

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        raise NotImplementedError

    def parser(self) -> OutputParser:
        return PlainTextParser()

    def auto_approves(self, args: list[str]) -> bool:
        """Whether ``args`` put the CLI in an auto-approve mode.

        Checks exact flags (also in ``--flag=value`` form), flags whose *value* decides
        (``--approval-mode yolo``), and single-letter flags bundled as ``-dy``. It errs on the
        side of "yes": a false positive only sends a run to an isolated backend.
        """
        for i, arg in enumerate(args):
            name, eq, value = arg.partition("=")
            if name in self.auto_approve_flags:
                return True
            if any(len(name) >= n and flag.startswith(name) for flag, n in self.auto_approve_abbrev.items()):
                return True
            if name in self.auto_approve_values:
                if not eq:
                    value = args[i + 1] if i + 1 < len(args) else ""
                if value in self.auto_approve_values[name]:
                    return True
            if _SHORT_BUNDLE.fullmatch(arg) and any(c in self.auto_approve_short for c in arg[1:]):
                return True
        return False

    def executable(self, command: str) -> str:
        """The program to run: the agent's ``command`` or this kind's default."""
        exe = command or self.default_command
        if not exe:
            raise ValidationFailed(f"agent kind {self.name!r} needs a command")
        return exe


_SHORT_BUNDLE = re.compile(r"-[A-Za-z]+")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, OSC titles): errors are read by
    people in the API and the UI, not by a terminal."""
    return _ANSI.sub("", text)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_id(value: str, what: str = "resume id") -> str:
    """Refuse session ids that could read as a flag or carry odd bytes.

    Resume ids come back from the CLI's own output, which a prompt can influence, so they
    are never trusted to be inert argv elements.
    """
    if not _SAFE_ID.fullmatch(value):
        raise ValidationFailed(f"invalid {what}: {value!r}")
    return value


def safe_value(value: str, what: str = "model") -> str:
    """Refuse option values (model names) that start with ``-`` or contain control bytes.

    Most are passed as ``--flag=value`` anyway; this guards the positional ones (ollama).
    """
    if not value or value.startswith("-") or _CONTROL.search(value):
        raise ValidationFailed(f"invalid {what}: {value!r}")
    return value


def json_object(line: str) -> dict[str, Any] | None:
    """Parse one output line as a JSON object with a string ``type``; None for anything else."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json_text(line)  # a "\ud800" escape (a lone surrogate) could not be stored (text.py)
    except ValueError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("type"), str):
        return obj
    return None


class JsonLinesParser(OutputParser):
    """For CLIs printing one JSON event per stdout line: subclasses implement ``handle``.

    Lines that are not JSON objects with a ``type``, or whose shape surprises ``handle``,
    yield no event; stderr never carries the structured stream.
    """

    def parse_line(self, stream: Stream, line: str) -> list[ParsedEvent]:
        if stream != "stdout":
            return []
        obj = json_object(line)
        if obj is None:
            return []
        try:
            return self.handle(obj)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError):
            return []

    def handle(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        return []

    def add_usage(self, **counts: Any) -> None:
        """Merge numeric counts into ``usage`` (summing across turns), skipping Nones."""
        usage = self.usage if self.usage is not None else {}
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            usage[key] = usage.get(key, 0) + value
        self.usage = usage


def text_of(content: Any) -> str:
    """Flatten a tool output that may be a string or a list of ``{"type":"text"}`` blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "") if isinstance(b, dict) else str(b) for b in content
        )
    if content is None:
        return ""
    return json.dumps(content)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: tolerant reading of CLI events."""
    return value if isinstance(value, dict) else {}
