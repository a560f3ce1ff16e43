"""Each kind's parser against output recorded from the real CLIs (tests/fakes/recorded/).

The recordings are the exact stdout, stderr and exit code of Claude Code 2.1.197, Codex
0.171.0, Gemini CLI 0.61.0 and aider 0.86.2, each pointed at tests/fakes/model_api.py (which
streams "The answer is forty-two, as computed." in four chunks). Each test pins one mismatch
issue 16 found between those lines and what the product made of them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent_manager.agents import KINDS
from agent_manager.agents.base import OutputParser, ParsedEvent
from agent_manager.agents.gemini import GeminiParser

RECORDED = Path(__file__).parent / "fakes" / "recorded"
FAKES = Path(__file__).parent / "fakes" / "bin"
ANSWER = "The answer is forty-two, as computed."


def recorded(name: str) -> tuple[str, str, int]:
    return ((RECORDED / f"{name}.stdout").read_text(), (RECORDED / f"{name}.stderr").read_text(),
            int((RECORDED / f"{name}.code").read_text()))


def replay(kind: str, name: str, chunk: int = 0, parser: OutputParser | None = None
           ) -> tuple[OutputParser, list[ParsedEvent], str, int]:
    """Feed a recording to a fresh parser (in ``chunk``-sized pieces if given)."""
    out, err, code = recorded(name)
    parser = parser or KINDS[kind].parser()
    events: list[ParsedEvent] = []
    step = chunk or max(len(out), 1)
    for i in range(0, len(out), step):
        events += parser.feed("stdout", out[i:i + step])
    events += parser.feed("stderr", err)
    events += parser.close()
    return parser, events, err, code


def of(events: list[ParsedEvent], kind: str) -> list[dict]:
    return [e.data for e in events if e.type == kind]


# --- Gemini ---------------------------------------------------------------------------------------


def test_gemini_runs_in_an_untrusted_workspace() -> None:
    """Out of the box every run failed with exit 55; the kind now trusts the run's workspace."""
    inv = KINDS["gemini"].build("", [], "p")
    assert inv.env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    _, err, code = recorded("gemini-untrusted")
    assert code == 55 and "\x1b[31m" in err  # what the CLI prints without it


@pytest.mark.parametrize(("name", "words"), [
    ("gemini-untrusted", ["not running in a trusted directory", "exit code 55", "not trusted"]),
    ("gemini-no-auth", ["Invalid auth method selected.", "exit code 41", "auth"]),
])
def test_gemini_fatal_errors_are_plain_text_with_the_exit_code_explained(name: str, words: list[str]) -> None:
    parser, events, err, code = replay("gemini", name)
    message = parser.failure(code, err)
    assert "\x1b" not in message
    for word in words:
        assert word in message
    assert not events


def test_gemini_api_error_exit_144_reads_as_the_providers_message() -> None:
    parser, events, err, code = replay("gemini", "gemini-api-error")
    assert code == 144  # HTTP 400 modulo 256
    assert parser.error == "API Error 400: stub: the request was refused (STUB_ERROR)"
    assert of(events, "error") == [{"message": parser.error}]
    assert not of(events, "message") and parser.answer is None


def test_gemini_tool_result_without_output() -> None:
    parser, events, _, _ = replay("gemini", "gemini-tool")
    use, result = of(events, "tool")
    assert use["name"] == "read_file" and use["input"]["file_path"].endswith("notes.txt")
    assert result["id"] == use["id"] and result["status"] == "success"
    assert "output" not in result  # the real line's output is empty: no invented output
    line = '{"type":"tool_result","timestamp":"t","tool_id":"x","status":"success"}\n'
    bare = GeminiParser()
    assert bare.feed("stdout", line) == [ParsedEvent("tool", {"name": "", "id": "x", "status": "success"})]


def test_gemini_stream_is_four_deltas() -> None:
    parser, events, _, code = replay("gemini", "gemini-run", chunk=13)
    assert code == 0
    messages = of(events, "message")
    assert len(messages) == 4 and all(m["delta"] for m in messages)
    assert parser.answer == ANSWER and parser.usage and parser.usage["input_tokens"] == 200


# --- Claude -----------------------------------------------------------------------------------------


def test_claude_partial_messages_stream_and_are_not_doubled() -> None:
    assert "--include-partial-messages" in KINDS["claude"].build("", [], "p").argv
    for chunk in (0, 1, 50):
        parser, events, _, _ = replay("claude", "claude-run", chunk=chunk)
        messages = of(events, "message")
        assert [m["text"] for m in messages] == ["The answer ", "is forty", "-two, as ", "computed."]
        assert all(m["delta"] for m in messages)  # the finished assistant message is not repeated
        assert parser.answer == ANSWER and parser.error is None


def test_claude_without_partial_messages_still_shows_the_message() -> None:
    """Older CLIs (or partial messages turned off) print only the finished message."""
    out, _, _ = recorded("claude-run")
    lines = [ln for ln in out.splitlines() if '"type":"stream_event"' not in ln]
    parser = KINDS["claude"].parser()
    events = parser.feed("stdout", "\n".join(lines) + "\n") + parser.close()
    assert of(events, "message") == [{"text": ANSWER, "delta": False}]


def test_claude_api_error_is_the_runs_error_not_its_answer() -> None:
    parser, events, _, code = replay("claude", "claude-api-error")
    assert code == 1
    assert parser.error is not None and parser.error.startswith("API Error: 400")
    assert parser.answer is None
    assert not of(events, "message")  # the synthetic "API Error" assistant message is not a reply
    assert of(events, "error") == [{"message": parser.error}]


# --- Codex ------------------------------------------------------------------------------------------


def test_codex_usage_is_per_turn_across_resumed_turns() -> None:
    """The CLI reports the thread's running total (100, 200, 300 input tokens)."""
    previous = None
    for turn in ("codex-turn1", "codex-turn2", "codex-turn3"):
        parser = KINDS["codex"].parser()
        parser.resumed(previous)
        parser, events, _, code = replay("codex", turn, parser=parser)
        assert code == 0 and parser.answer == ANSWER
        assert parser.usage is not None
        assert (parser.usage["input_tokens"], parser.usage["output_tokens"], parser.usage["total_tokens"]) == \
            (100, 10, 110), turn
        previous = parser.usage


def test_codex_item_error_is_a_warning_on_a_successful_run() -> None:
    parser, events, _, code = replay("codex", "codex-turn1")
    out, _, _ = recorded("codex-turn1")
    assert '"type":"error"' in out  # "Model metadata for `gpt-5` not found…"
    assert code == 0 and parser.error is None and not of(events, "error")
    assert [w["message"][:30] for w in of(events, "warning")] == ["Model metadata for `gpt-5` not"]


def test_codex_api_error_once_and_readable() -> None:
    parser, events, _, code = replay("codex", "codex-api-error")
    assert code == 1
    assert of(events, "error") == [{"message": "API error: stub: the request was refused (STUB_ERROR)"}]
    assert parser.error == "API error: stub: the request was refused (STUB_ERROR)"


# --- aider --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1, 9, 64])
def test_aider_answer_is_separated_from_banner_and_status(chunk: int) -> None:
    parser, events, _, code = replay("aider", "aider-run", chunk=chunk)
    assert code == 0
    assert parser.answer == ANSWER
    assert "".join(m["text"] for m in of(events, "message")).strip() == ANSWER
    assert parser.usage == {"input_tokens": 592, "output_tokens": 9, "total_tokens": 601}
    assert parser.error is None


def test_aider_model_api_failure_fails_the_run_though_it_exits_0() -> None:
    parser, events, _, code = replay("aider", "aider-api-error")
    assert code == 0
    assert parser.error == "litellm.BadRequestError: OpenAIException - stub: the request was refused (STUB_ERROR)"
    assert parser.answer is None and of(events, "error") == [{"message": parser.error}]


def test_aider_token_line_with_costs_and_cache() -> None:
    parser = KINDS["aider"].parser()
    text = ("Aider v0.86.2\nModel: x\n\nHi.\n"
            "Tokens: 2.5k sent, 1.2k cache write, 3k cache hit, 310 received. Cost: $0.01 message, $0.02 session.\n")
    parser.feed("stdout", text)
    parser.close()
    assert parser.answer == "Hi."
    assert parser.usage == {"input_tokens": 2500, "output_tokens": 310, "total_tokens": 2810,
                            "cache_write_tokens": 1200, "cache_read_tokens": 3000, "cost_usd": 0.01}


def test_aider_never_answers_yes_unless_configured() -> None:
    kind = KINDS["aider"]
    inv = kind.build("", [], "fix it")
    assert inv.stdin and set(inv.stdin) == set(b"n\n") and "--no-fancy-input" in inv.argv
    assert not kind.auto_approves(inv.argv[1:])
    for flag in ("--yes-always", "--yes-a", "--yes", "--y"):
        assert kind.auto_approves([flag])


@pytest.mark.parametrize("prompt", ["/run touch X", "!touch X", "/help", "!"])
def test_aider_prompt_is_never_an_aider_command(prompt: str) -> None:
    argv = KINDS["aider"].build("", [], prompt).argv
    assert argv[-1] == f"--message= {prompt}"


# --- the fakes in tests/fakes/bin, checked against the recordings ------------------------------------

RECORDINGS = {"claude": ["claude-run", "claude-tool", "claude-api-error"],
              "codex": ["codex-turn1", "codex-turn2", "codex-tool", "codex-api-error"],
              "gemini": ["gemini-run", "gemini-tool", "gemini-api-error"],
              "opencode": ["opencode-run", "opencode-tool", "opencode-api-error"]}

# In the CLIs' own source types but not produced against the stub (a failed tool run, a
# mid-stream warning): the fakes may print these.
DOCUMENTED = {"claude": {"result": {"errors"}},
              "gemini": {"error": {"type", "timestamp", "severity", "message"}}}


def shapes(text: str) -> dict[str, set[str]]:
    """Event type → the top-level keys seen on lines of that type."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            found.setdefault(obj["type"], set()).update(obj)
    return found


@pytest.mark.parametrize("kind", list(RECORDINGS))
def test_fake_cli_lines_have_the_real_shapes(kind: str) -> None:
    """Every event type a fake prints exists in the real CLI's output, with no key the real
    lines lack: the fakes stay faithful for the edge cases they are kept for."""
    real: dict[str, set[str]] = {}
    for name in RECORDINGS[kind]:
        for etype, keys in shapes(recorded(name)[0]).items():
            real.setdefault(etype, set()).update(keys)
    for etype, keys in DOCUMENTED.get(kind, {}).items():
        real.setdefault(etype, set()).update(keys)
    env = {**os.environ, "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_DELAY": "0"}
    for prompt in ("hello", "use a TOOL", "please FAIL"):
        inv = KINDS[kind].build("", [], prompt)
        out = subprocess.run(inv.argv, input=inv.stdin or b"", capture_output=True, env=env, timeout=30).stdout
        for etype, keys in shapes(out.decode()).items():
            assert etype in real, f"fake {kind} prints {etype!r}, the real CLI never did"
            assert keys <= real[etype], f"fake {kind} {etype}: keys {sorted(keys - real[etype])} not in real lines"
