"""aider (``aider-chat``) in one-shot mode: ``aider --message=PROMPT``, plain text output.

Source: Aider-AI/aider ``aider/args.py`` (configargparse): ``--message/--msg/-m`` "Specify
a single message to send the LLM, process reply then exit"; ``--no-pretty`` turns off
colour/markdown rendering; ``--yes-always`` answers every confirmation with yes.

Prompt passing: the single token ``--message=<prompt>``. argparse splits ``--opt=value`` at
the first ``=`` and takes the rest verbatim, so a prompt like ``--yes-always`` stays text;
``["--message", prompt]`` would fail (or worse) for prompts starting with ``-``. aider itself
then treats a message starting with ``/`` or ``!`` as one of its commands (``/run …`` runs a
shell command: ``Commands.is_command`` looks at the first character only), so such a prompt
gets one leading space: the model reads the same text, aider no longer sees a command.

Questions (checked against aider 0.86.2): aider asks before creating a git repository,
running shell commands the model suggested, fetching URLs in the prompt, installing
packages… With an empty stdin every question takes its *default* answer, mostly yes. The
kind therefore turns off fancy input (so questions read plain stdin lines) and feeds "n" to
every one; only ``--yes-always`` in the agent's ``args`` (which routing treats as
auto-approve, abbreviations included) makes aider answer yes.

Output: aider prints warnings, its banner, the answer (streamed as the model writes it),
then ``Tokens: N sent, M received.``. A model API failure is printed as ``litellm.…Error``
lines and aider still exits 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent_manager.models import Stream

from .base import AgentKind, Gateway, Invocation, OutputParser, ParsedEvent, safe_value

# Enough "no" answers for any run: each question reads one line; EOF would mean "default".
NO_ANSWERS = b"n\n" * 32_768
QUIET_FLAGS = ["--no-pretty", "--no-fancy-input", "--no-check-update", "--no-show-release-notes",
               "--no-analytics"]
# Lines aider prints around the answer. Prefixes, so a partial line can be classified early.
STATUS_PREFIXES = (
    "Aider v", "Main model:", "Model:", "Weak model:", "Editor model:", "Git repo:", "Repo-map:",
    "Added ", "Cur working dir", "Warning", "You can skip", "Use /help", "https://aider.chat/",
    "Update git ", "Git repository created", "Restored previous conversation", "Detected dumb terminal",
    "Note:", "HTTPSConnectionPool", "Tokens:", "Cost:", "litellm.", "Retrying in", "Applied edit to",
    "Commit ", "Did not apply edit", "Only 3 reflections", "Newer aider version", "Run pip install",
    "Scanning repo", "Initial repo scan", "Model ", "defaults.", "For more info", "Skipping ",
    "No git repo found", "Open documentation url", "Add URL to the chat?", "Run shell command",
    "Allow edits to", "Create new file", "Please answer with one of", "The API provider",
)
_TOKENS = re.compile(r"^Tokens: ([\d.]+)(k?) sent(?:, ([\d.]+)(k?) cache write)?(?:, ([\d.]+)(k?) cache hit)?"
                     r", ([\d.]+)(k?) received\.(?: Cost: \$([\d.]+) message, \$([\d.]+) session\.)?")
_QUESTION = re.compile(r"\(Y\)es/\(N\)o[^\n]*?\[[^\]]*\]: ")


def _count(number: str, k: str) -> int:
    return int(round(float(number) * (1000 if k else 1)))


@dataclass
class AiderParser(OutputParser):
    """Tells aider's answer from its banner and status lines, streaming the answer.

    States: ``banner`` until the first line that is not a status line, then ``answer`` (each
    line, and each partial line that can no longer become a status line, is a message delta)
    until ``Tokens: …``, then ``after`` (edits, commits; more answer text if aider asks the
    model again). ``litellm.…`` lines are the model API failing: the run fails even though
    aider exits 0.
    """

    state: str = "banner"
    _shown: int = 0  # characters of the current partial stdout line already sent as a delta
    _error_lines: list[str] = field(default_factory=list)
    _in_error: bool = False
    _answer_seen: bool = False

    def feed(self, stream: Stream, text: str) -> list[ParsedEvent]:
        events = super().feed(stream, text)
        if stream == "stdout":
            events += self._partial_delta(self._partial.get("stdout", ""))
        return events

    def _partial_delta(self, partial: str) -> list[ParsedEvent]:
        """Send the unfinished line's new text once it cannot turn into a status line."""
        if self._in_error or len(partial) <= self._shown or _QUESTION.search(partial):
            return []
        if self._shown == 0 and self._could_be_status(partial):
            return []
        self.state = "answer"
        piece = partial[self._shown:]
        self._shown = len(partial)
        return self._say(piece)

    @staticmethod
    def _could_be_status(partial: str) -> bool:
        head = partial.lstrip()
        return not head or any(p.startswith(head) or head.startswith(p) for p in STATUS_PREFIXES)

    def _say(self, text: str) -> list[ParsedEvent]:
        self._answer_seen = True
        self.answer_parts.append(text)
        return [ParsedEvent("message", {"text": text, "delta": True})]

    def parse_line(self, stream: Stream, line: str) -> list[ParsedEvent]:
        if stream != "stdout":
            return []
        shown, self._shown = self._shown, 0
        if shown:  # part of this line already went out as a delta: send the rest
            return self._say(line[shown:] + "\n")
        question = _QUESTION.search(line)
        if question:  # "Create a git repo? (Y)es/(N)o [Yes]: " then whatever came next
            line = line[question.end():]
            if not line.strip():
                return []
        clean = line.strip()
        if self._in_error:
            if clean:
                self._error_lines.append(clean)
                self.error = " ".join(self._error_lines)
                return []
            self._in_error = False
            return [ParsedEvent("error", {"message": self.error or ""})]
        if clean.startswith("litellm."):
            self._error_lines = [clean]
            self.error, self._in_error = clean, True
            return []
        tokens = _TOKENS.match(clean)
        if tokens:
            self._usage(tokens)
            self.state = "after"
            return []
        if self.state != "answer" and self._could_be_status(line):
            return []
        if self.state == "after" and self.answer_parts:
            self.answer_parts.append("\n")
        self.state = "answer"
        return self._say(line + "\n")

    def _usage(self, m: re.Match[str]) -> None:
        sent, received = _count(m.group(1), m.group(2)), _count(m.group(7), m.group(8))
        self.add_usage_counts(input_tokens=sent, output_tokens=received, total_tokens=sent + received,
                              cache_write_tokens=_count(m.group(3), m.group(4)) if m.group(3) else None,
                              cache_read_tokens=_count(m.group(5), m.group(6)) if m.group(5) else None,
                              cost_usd=float(m.group(9)) if m.group(9) else None)

    def add_usage_counts(self, **counts: int | float | None) -> None:
        usage = self.usage if self.usage is not None else {}
        for key, value in counts.items():
            if value is not None:
                usage[key] = usage.get(key, 0) + value
        self.usage = usage

    def close(self) -> list[ParsedEvent]:
        events = super().close()
        if self._in_error:
            self._in_error = False
            events.append(ParsedEvent("error", {"message": self.error or ""}))
        if self.error and self._answer_seen and self.usage:
            self.error = None  # aider retried and the model answered after all
        return events

    @property
    def answer(self) -> str | None:
        text = "".join(self.answer_parts).strip("\n")
        return text or None


class AiderKind(AgentKind):
    name = "aider"
    title = "aider"
    description = "AI pair programming in the terminal (aider.chat)"
    default_command = "aider"
    install_hint = "python -m pip install aider-install && aider-install"
    supports_resume = False  # aider keeps chat history per directory, not per session id
    auto_approve_flags = frozenset({"--yes-always"})
    # configargparse keeps argparse's allow_abbrev: `--yes`, `--yes-a` … all mean --yes-always
    # (`--y` is the shortest prefix no other aider option shares).
    auto_approve_abbrev = {"--yes-always": 3}
    streams_answer = True

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command), *QUIET_FLAGS]
        env: dict[str, str] = {}
        if model:
            safe_value(model)
            if gateway and "/" not in model:
                model = f"openai/{model}"  # litellm's name for "an OpenAI-compatible endpoint"
            argv.append(f"--model={model}")
        if gateway:
            argv.append(f"--openai-api-base={gateway.base_url}")
            if gateway.api_key:
                env["OPENAI_API_KEY"] = gateway.api_key
        argv += args
        text = f" {prompt}" if prompt[:1] in ("/", "!") else prompt  # text, never an aider command
        argv.append(f"--message={text}")
        return Invocation(argv=argv, stdin=NO_ANSWERS, env=env)

    def parser(self) -> OutputParser:
        return AiderParser()
