"""Agent kinds: argv building (prompt safety), and parsing the CLIs' documented formats.

Every kind's invocation is run against the fake CLI in tests/fakes/bin (which imitates the
real CLI's flags and output format) and against ``argv-dump`` (which shows exactly what
reached the process).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent_manager.agents import KINDS, get_kind
from agent_manager.agents.base import AgentKind, Invocation, OutputParser, ParsedEvent
from agent_manager.errors import ValidationFailed

FAKES = Path(__file__).parent / "fakes" / "bin"
DANGEROUS = [
    "--yolo",
    "-y",
    "x; touch /tmp/pwned",
    "$(id)",
    "-p --dangerously-skip-permissions",
    "--prompt=evil",
    "--",
    "-",
    "resume",
    "{prompt}",
    'multi\nline "quoted" \'single\' `tick` \\ back',
    "  leading and trailing spaces  ",
    "ünïcødé ✓ 日本",
    "/run touch /tmp/pwned",
    "!touch /tmp/pwned",
]
JSON_KINDS = ["gemini", "claude", "codex", "opencode"]
PLAIN_KINDS = ["ollama", "llm"]
ALL_KINDS = ["gemini", "claude", "codex", "ollama", "aider", "opencode", "llm", "generic"]
COMMAND = {"generic": "some-tool"}
STDIN_PROMPT_KINDS = {"codex", "opencode", "ollama", "llm"}  # aider's stdin only answers "n"


def aider_text(prompt: str) -> str:
    """What aider's --message carries: a prompt aider would run as a command gets a space."""
    return f" {prompt}" if prompt[:1] in "/!" else prompt


def fake_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_DELAY": "0"}


def build(kind: str, prompt: str, **kw: str | None) -> Invocation:
    model = kw.get("model", "test-model")
    return KINDS[kind].build(COMMAND.get(kind, ""), [], prompt, model=model, resume_id=kw.get("resume_id"))


def run(inv: Invocation, argv0: str | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = [argv0 or inv.argv[0], *inv.argv[1:]]
    return subprocess.run(argv, input=inv.stdin if inv.stdin is not None else b"", capture_output=True,
                          env=fake_env(), timeout=30, check=False)


def parse(kind: str, stdout: bytes, stderr: bytes = b"") -> tuple[OutputParser, list[ParsedEvent]]:
    parser = KINDS[kind].parser()
    events = parser.feed("stdout", stdout.decode()) + parser.feed("stderr", stderr.decode()) + parser.close()
    return parser, events


def of_type(events: list[ParsedEvent], t: str) -> list[dict]:
    return [e.data for e in events if e.type == t]


# --- registry ---------------------------------------------------------------------------------


def test_registry_has_exactly_the_documented_kinds() -> None:
    assert sorted(KINDS) == sorted(ALL_KINDS)
    for name, kind in KINDS.items():
        assert isinstance(kind, AgentKind) and kind.name == name and get_kind(name) is kind
        assert kind.install_hint
    with pytest.raises(ValidationFailed):
        get_kind("nope")


# --- prompt safety ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("prompt", DANGEROUS)
def test_prompt_is_one_element_or_stdin_and_sets_no_flag(kind: str, prompt: str) -> None:
    inv = build(kind, prompt)
    other = build(kind, "PLACEHOLDER")
    k = KINDS[kind]
    assert not k.auto_approves(inv.argv[1:]), inv.argv
    if kind in STDIN_PROMPT_KINDS:
        assert inv.stdin == prompt.encode()
        assert inv.argv == other.argv  # argv does not depend on the prompt at all
        return
    assert len(inv.argv) == len(other.argv)
    differ = [i for i, (a, b) in enumerate(zip(inv.argv, other.argv, strict=True)) if a != b]
    assert len(differ) == 1, (inv.argv, other.argv)
    i = differ[0]
    element = inv.argv[i]
    if kind == "gemini":
        assert element == f"--prompt={prompt}"
    elif kind == "aider":
        assert element == f"--message={aider_text(prompt)}"
        assert inv.stdin == other.stdin and set(inv.stdin or b"") == set(b"n\n")  # every question: no
    elif kind == "claude":
        assert element == prompt and inv.argv[i - 1] == "--" and i == len(inv.argv) - 1
    else:  # generic appends the bare prompt
        assert element == prompt and i == len(inv.argv) - 1


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("prompt", DANGEROUS)
def test_prompt_arrives_byte_identical_through_argv_dump(kind: str, prompt: str) -> None:
    inv = build(kind, prompt)
    proc = run(inv, argv0=str(FAKES / "argv-dump"))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == inv.argv[1:]
    if kind in STDIN_PROMPT_KINDS:
        assert seen["stdin"] == prompt
        assert seen["argv"] == build(kind, "PLACEHOLDER").argv[1:]  # the prompt is not in argv
    else:
        assert seen["stdin"] == (inv.stdin or b"").decode()
        expected = {"gemini": f"--prompt={prompt}", "aider": f"--message={aider_text(prompt)}"}.get(kind, prompt)
        assert seen["argv"][-1] == expected  # every argv kind puts the prompt last


@pytest.mark.parametrize("kind", ["gemini", "claude", "codex", "opencode", "ollama", "llm", "aider"])
@pytest.mark.parametrize("prompt", ["--yolo", "-y", "x; touch /tmp/pwned", "$(id)", "- [ ] item"])
def test_fake_cli_receives_the_prompt_as_text(kind: str, prompt: str) -> None:
    """The fakes parse argv like the real CLIs do; the answer echoes the prompt unchanged."""
    proc = run(build(kind, prompt))
    assert proc.returncode == 0, proc.stderr
    parser, _ = parse(kind, proc.stdout, proc.stderr)
    assert parser.answer is not None and f"Echo: {aider_text(prompt) if kind == 'aider' else prompt}" in parser.answer


def test_generic_substitutes_only_whole_token_elements() -> None:
    g = KINDS["generic"]
    assert g.build("tool", ["-x", "{prompt}", "--"], "--yolo").argv == ["tool", "-x", "--yolo", "--"]
    assert g.build("tool", ["--q={prompt}"], "$(id)").argv == ["tool", "--q={prompt}", "$(id)"]
    assert g.build("tool", [], "a b").argv == ["tool", "a b"]
    assert g.build("tool", ["{prompt}", "{prompt}"], "p").argv == ["tool", "p", "p"]
    with pytest.raises(ValidationFailed):
        g.build("", [], "p")


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if KINDS[k].supports_resume])
@pytest.mark.parametrize("bad", ["--yolo", "-x", "a b", "", "id\n--yolo"])
def test_resume_ids_that_could_be_flags_are_refused(kind: str, bad: str) -> None:
    with pytest.raises(ValidationFailed):
        KINDS[kind].build("", [], "p", resume_id=bad) if bad else _raise()


def _raise() -> None:
    raise ValidationFailed("empty")


@pytest.mark.parametrize("kind", ["gemini", "claude", "codex", "opencode", "ollama", "llm", "aider"])
def test_model_that_looks_like_a_flag_is_refused(kind: str) -> None:
    with pytest.raises(ValidationFailed):
        KINDS[kind].build("", [], "p", model="--yolo")


def test_ollama_needs_a_model() -> None:
    with pytest.raises(ValidationFailed):
        KINDS["ollama"].build("", [], "p")
    assert KINDS["ollama"].build("", ["llama3"], "p").argv == ["ollama", "run", "llama3"]


@pytest.mark.parametrize(
    ("kind", "args", "expected"),
    [
        ("gemini", ["--yolo"], True), ("gemini", ["-y"], True), ("gemini", ["-sy"], True),
        ("gemini", ["--approval-mode", "yolo"], True), ("gemini", ["--approval-mode=auto_edit"], True),
        ("gemini", ["--approval-mode=default"], False), ("gemini", ["--sandbox"], False),
        ("claude", ["--dangerously-skip-permissions"], True),
        ("claude", ["--permission-mode", "bypassPermissions"], True),
        ("claude", ["--permission-mode", "plan"], False),
        ("codex", ["--dangerously-bypass-approvals-and-sandbox"], True), ("codex", ["--full-auto"], True),
        ("codex", ["-s", "danger-full-access"], True), ("codex", ["--sandbox=read-only"], False),
        ("aider", ["--yes-always"], True), ("aider", ["--no-pretty"], False),
        ("aider", ["--yes-a"], True), ("aider", ["--yes"], True), ("aider", ["--y"], True),
        ("aider", ["--yes-always=true"], True), ("aider", ["--yes-alwaysx"], False), ("aider", ["-y"], False),
        ("opencode", ["--auto"], True), ("opencode", ["--agent", "build"], False),
        ("ollama", ["--verbose"], False), ("llm", ["-n"], False),
    ],
)
def test_auto_approve_detection(kind: str, args: list[str], expected: bool) -> None:
    assert KINDS[kind].auto_approves(args) is expected


# --- running the fakes and parsing their documented formats --------------------------------------


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_json_kind_normal_run(kind: str) -> None:
    proc = run(build(kind, "hello world"))
    assert proc.returncode == 0, proc.stderr
    parser, events = parse(kind, proc.stdout, proc.stderr)
    messages = of_type(events, "message")
    assert messages and "".join(m["text"] for m in messages).endswith("Echo: hello world")
    assert all(isinstance(m["delta"], bool) for m in messages)
    assert parser.answer == "Echo: hello world"
    assert parser.error is None and not of_type(events, "error")
    assert parser.session_id
    assert parser.usage and parser.usage["input_tokens"] > 0 and parser.usage["output_tokens"] > 0
    assert parser.usage["total_tokens"] == parser.usage["input_tokens"] + parser.usage["output_tokens"] + sum(
        parser.usage.get(k, 0) for k in ("cache_creation_input_tokens", "cache_read_input_tokens"))
    if kind in ("claude", "opencode"):
        assert parser.usage["cost_usd"] > 0


def test_gemini_streams_deltas() -> None:
    proc = run(build("gemini", "one two three"))
    _, events = parse("gemini", proc.stdout)
    assert len(of_type(events, "message")) >= 3 and all(m["delta"] for m in of_type(events, "message"))


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_json_kind_resume_passes_the_session_id(kind: str) -> None:
    first = run(build(kind, "hi"))
    parser, _ = parse(kind, first.stdout)
    assert parser.session_id
    again = run(build(kind, "more", resume_id=parser.session_id))
    assert again.returncode == 0, again.stderr
    resumed, _ = parse(kind, again.stdout)
    assert resumed.session_id == parser.session_id
    assert resumed.answer == f"[resumed {parser.session_id}] Echo: more"


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_json_kind_tool_events(kind: str) -> None:
    proc = run(build(kind, "use a TOOL"))
    assert proc.returncode == 0, proc.stderr
    parser, events = parse(kind, proc.stdout)
    tools = of_type(events, "tool")
    assert tools and all(t["name"] for t in tools)
    assert any(t.get("input") for t in tools)
    assert any("file.txt" in str(t.get("output", "")) for t in tools)
    assert len({t.get("id") for t in tools}) == 1
    assert parser.answer == "Echo: use a TOOL"


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_json_kind_failure(kind: str) -> None:
    proc = run(build(kind, "please FAIL"))
    assert proc.returncode == 1
    parser, events = parse(kind, proc.stdout, proc.stderr)
    assert of_type(events, "error") and all(e["message"] for e in of_type(events, "error"))
    assert parser.error and "simulated failure" in parser.error
    assert not (parser.final_answer or "").startswith("Echo")


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_json_kind_garbage_lines_are_ignored(kind: str) -> None:
    proc = run(build(kind, "GARBAGE and TOOL"))
    assert proc.returncode == 0
    assert any(not line.startswith(b"{") for line in proc.stdout.splitlines())  # garbage was printed
    parser, events = parse(kind, proc.stdout)
    assert parser.answer == "Echo: GARBAGE and TOOL"
    assert of_type(events, "tool") and not of_type(events, "error")


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_json_kind_same_events_whatever_the_chunking(kind: str) -> None:
    proc = run(build(kind, "TOOL chunks"))
    text = proc.stdout.decode()
    _, whole = parse(kind, proc.stdout)
    for size in (1, 7, 64):
        parser = KINDS[kind].parser()
        events: list[ParsedEvent] = []
        for i in range(0, len(text), size):
            events += parser.feed("stdout", text[i:i + size])
        events += parser.close()
        assert events == whole
        assert parser.answer == "Echo: TOOL chunks"


@pytest.mark.parametrize("kind", PLAIN_KINDS)
def test_plain_kind_runs(kind: str) -> None:
    proc = run(build(kind, "hello there"))
    assert proc.returncode == 0, proc.stderr
    parser, events = parse(kind, proc.stdout, proc.stderr)
    assert events == []
    assert parser.answer is not None and parser.answer.rstrip("\n").endswith("Echo: hello there")
    failed = run(build(kind, "FAIL"))
    assert failed.returncode == 1 and b"simulated failure" in failed.stderr


@pytest.mark.parametrize("kind", [*JSON_KINDS, "ollama", "llm"])
def test_sleep_keyword_prints_then_sleeps(kind: str) -> None:
    inv = build(kind, "SLEEP=30")
    stdin = inv.stdin if inv.stdin is not None else b""
    proc = subprocess.Popen(inv.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=fake_env())
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        first = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
        assert first  # something arrives before the sleep
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
    finally:
        proc.kill()
        proc.wait()


# --- parser robustness on hand-written lines ----------------------------------------------------

JUNK = [
    "", "   ", "not json", "{", "[1, 2]", "null", '"string"', "{}", '{"type": 5}', '{"type": "assistant"}',
    '{"type": "assistant", "message": null}', '{"type": "user", "message": {"content": "plain"}}',
    '{"type": "message", "role": "assistant", "content": 5}', '{"type": "item.completed", "item": null}',
    '{"type": "item.completed", "item": {"type": "agent_message"}}', '{"type": "thread.started"}',
    '{"type": "tool_use", "part": "x"}', '{"type": "text", "part": null}', '{"type": "result", "stats": 3}',
    '{"type": "turn.completed", "usage": null}', '{"type": "step_finish", "part": {"tokens": "x"}}',
    "\x00\x01binary", '{"type": "future_thing", "x": 1}',
]


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k != "aider"])  # any aider text can be an answer
def test_junk_lines_never_raise_or_produce_events(kind: str) -> None:
    parser = KINDS[kind].parser()
    events: list[ParsedEvent] = []
    for line in JUNK:
        events += parser.feed("stdout", line + "\n")
        events += parser.feed("stderr", line + "\n")
    events += parser.feed("stdout", '{"type": "unterminated')
    events += parser.close()
    assert [e for e in events if e.type != "tool"] == []


def test_split_json_line_across_two_chunks() -> None:
    item = {"id": "item_1", "type": "agent_message", "text": "4"}
    line = json.dumps({"type": "item.completed", "item": item})
    parser = KINDS["codex"].parser()
    assert parser.feed("stdout", line[:20]) == []
    assert parser.feed("stdout", line[20:] + "\n") == [ParsedEvent("message", {"text": "4", "delta": False})]
    assert parser.answer == "4"


def test_unterminated_last_line_is_parsed_on_close() -> None:
    parser = KINDS["claude"].parser()
    assert parser.feed("stdout", '{"type":"result","subtype":"success","is_error":false,"result":"ok"') == []
    assert parser.feed("stdout", ',"session_id":"s1","total_cost_usd":0.5,"usage":{}}') == []
    assert parser.close() == []
    assert parser.answer == "ok" and parser.session_id == "s1" and parser.usage == {"cost_usd": 0.5}


def test_codex_documented_example_stream() -> None:
    """Lines as printed by codex 0.46 (`codex exec --json "what is 2+2?"`)."""
    lines = [
        '{"type":"thread.started","thread_id":"019a2d7a-41c4-78b1-b7cc-a45d62a89cd5"}',
        '{"type":"turn.started"}',
        '{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Simple answer**"}}',
        '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"4"}}',
        '{"type":"turn.completed","usage":{"input_tokens":2946,"cached_input_tokens":0,"output_tokens":7}}',
    ]
    parser, events = parse("codex", ("\n".join(lines) + "\n").encode())
    assert events == [ParsedEvent("message", {"text": "4", "delta": False})]
    assert parser.session_id == "019a2d7a-41c4-78b1-b7cc-a45d62a89cd5"
    assert parser.usage == {"input_tokens": 2946, "output_tokens": 7, "total_tokens": 2953,
                            "cached_input_tokens": 0,
                            "thread": {"input_tokens": 2946, "cached_input_tokens": 0, "output_tokens": 7}}


def test_claude_api_error_result_is_an_error() -> None:
    line = ('{"type":"result","subtype":"success","is_error":true,"result":"API Error: 529 overloaded",'
            '"session_id":"s","total_cost_usd":0}\n')
    parser, events = parse("claude", line.encode())
    assert parser.error == "API Error: 529 overloaded" and parser.final_answer is None
    assert of_type(events, "error") == [{"message": "API Error: 529 overloaded"}]


def test_gemini_warning_is_reported_but_not_fatal() -> None:
    line = '{"type":"error","timestamp":"t","severity":"warning","message":"Loop detected"}\n'
    parser, events = parse("gemini", line.encode())
    assert of_type(events, "error")[0]["message"] == "Loop detected" and parser.error is None


# --- tree-spawner sanity (the executor tests rely on it) ----------------------------------------


def _marked_pids(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_tree_spawner_starts_its_tree_then_says_ready() -> None:
    marker = f"am-test-tree-{os.getpid()}"
    proc = subprocess.Popen([str(FAKES / "tree-spawner"), marker], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert lines[0] == f"pid {proc.pid}" and lines[2] == "ready"
        assert len(json.loads(lines[1])["children"]) == 3
        pids = _marked_pids(marker)
        assert len(pids) == 5  # spawner, child, middle, grandchild, setsid child
        sessions = {os.getsid(p) for p in pids}
        assert len(sessions) == 2  # the setsid child escaped the spawner's session
    finally:
        for pid in _marked_pids(marker):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait()
