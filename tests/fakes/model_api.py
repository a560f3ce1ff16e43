"""A local stand-in for the model APIs behind the real agent CLIs, speaking their wire formats.

The real CLIs (tests/test_real_clis.py, bench/clis.py) are pointed here through the agent's
gateway fields. One server answers all four formats the CLIs use:

* Anthropic Messages ``POST /v1/messages`` (``stream: true`` → SSE ``message_start``,
  ``content_block_start/delta/stop``, ``message_delta``, ``message_stop``) — Claude Code;
* OpenAI Responses ``POST /v1/responses`` (SSE ``response.created``,
  ``response.output_item.added``, ``response.output_text.delta``, ``response.output_item.done``,
  ``response.completed``) — Codex;
* OpenAI Chat Completions ``POST /v1/chat/completions`` (SSE ``chat.completion.chunk`` lines,
  ``data: [DONE]``) — opencode and aider;
* Gemini ``POST /v1beta/models/M:streamGenerateContent?alt=sse`` and the ``:generateContent``
  routing/side calls — Gemini CLI.

What a reply holds is decided by the last user message, so a test steers it with its prompt:
``STUB_ERROR`` → an HTTP 400 in the provider's error shape; ``STUB_TOOL`` → one tool call
(a read-only tool picked from the tools the CLI offered), then text once the tool result comes
back; anything else → ``ANSWER`` streamed in ``len(CHUNKS)`` chunks ``delay`` seconds apart.
Every streamed chunk's send time is recorded (``chunk_times``), so a test can tell a live
stream from one that arrives all at once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNKS = ["The answer ", "is forty", "-two, as ", "computed."]
ANSWER = "".join(CHUNKS)
TOOL_DONE = "Tool finished; the listing is in."
ERROR_TEXT = "stub: the request was refused (STUB_ERROR)"
USAGE_IN, USAGE_OUT = 100, 10
TOOL_FILE = "notes.txt"


def tool_choices(workdir: str) -> list[tuple[str, dict[str, Any]]]:
    """Read-only tools, in order of preference, each reading ``TOOL_FILE`` in ``workdir``."""
    path = f"{workdir.rstrip('/')}/{TOOL_FILE}"
    return [
        ("Read", {"file_path": path}),                    # Claude Code
        ("read_file", {"file_path": path}),               # Gemini CLI
        ("read", {"filePath": path}),                     # opencode
        ("shell", {"command": ["cat", TOOL_FILE], "workdir": workdir}),  # Codex
        ("exec_command", {"cmd": f"cat {TOOL_FILE}", "workdir": workdir}),
        ("shell_command", {"command": f"cat {TOOL_FILE}", "workdir": workdir}),
    ]


@dataclass
class Exchange:
    """One request the stub answered: which API, the JSON body, the steering it read."""

    api: str
    path: str
    body: dict[str, Any]
    mode: str
    started: float
    chunk_times: list[float] = field(default_factory=list)


class ModelStub:
    """The server; ``start()`` returns the base URL (``http://127.0.0.1:PORT``)."""

    def __init__(self, delay: float = 0.25, chunks: list[str] | None = None) -> None:
        self.delay = delay
        self.chunks = chunks or list(CHUNKS)
        self.exchanges: list[Exchange] = []
        self.workdir = "."  # where tool calls look for TOOL_FILE: the agent's workspace
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> str:
        stub = self

        class Handler(_Handler):
            owner = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> ModelStub:
        self.url = self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the tests read -----------------------------------------------------------------

    def streamed(self) -> list[Exchange]:
        """Exchanges that streamed answer text (not side calls, errors or tool calls)."""
        with self.lock:
            return [e for e in self.exchanges if e.mode == "answer" and e.chunk_times]

    def record(self, exchange: Exchange) -> None:
        with self.lock:
            self.exchanges.append(exchange)

    def reset(self) -> None:
        with self.lock:
            self.exchanges.clear()


def _text_of(value: Any) -> str:
    """Every string inside a JSON value, joined: enough to find the steering keywords."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return " ".join(_text_of(v) for v in value.values())
    return ""


def _last_user(api: str, body: dict[str, Any]) -> tuple[str, bool]:
    """(text of the last user turn, whether a tool result is already in the conversation)."""
    if api == "anthropic":
        msgs = [m for m in body.get("messages", []) if m.get("role") == "user"]
        has_result = any(isinstance(b, dict) and b.get("type") == "tool_result"
                         for m in msgs for b in (m.get("content") if isinstance(m.get("content"), list) else []))
        last = msgs[-1] if msgs else {}
        return _text_of(last.get("content")), has_result
    if api == "responses":
        items = body.get("input") if isinstance(body.get("input"), list) else []
        has_result = any(i.get("type") in ("function_call_output", "custom_tool_call_output") for i in items)
        users = [i for i in items if i.get("role") == "user"]
        return (_text_of(users[-1].get("content")) if users else _text_of(body.get("input"))), has_result
    if api == "chat":
        msgs = body.get("messages", [])
        has_result = any(m.get("role") == "tool" for m in msgs)
        users = [m for m in msgs if m.get("role") == "user"]
        return (_text_of(users[-1].get("content")) if users else ""), has_result
    contents = body.get("contents", [])
    has_result = any("functionResponse" in p for c in contents for p in c.get("parts", []))
    users = [c for c in contents if c.get("role") == "user" and any("text" in p for p in c.get("parts", []))]
    return (_text_of(users[-1].get("parts")) if users else ""), has_result


def _tools_offered(api: str, body: dict[str, Any]) -> list[str]:
    if api == "gemini":
        return [d.get("name", "") for t in body.get("tools", []) for d in t.get("functionDeclarations", [])]
    names = []
    for tool in body.get("tools", []) or []:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        names.append(str(fn.get("name", "")))
    return names


def _pick_tool(api: str, body: dict[str, Any], workdir: str) -> tuple[str, dict[str, Any]] | None:
    offered = set(_tools_offered(api, body))
    for name, args in tool_choices(workdir):
        if name in offered:
            return name, args
    return None


class _Handler(BaseHTTPRequestHandler):
    owner: ModelStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        return

    # -- plumbing ----------------------------------------------------------------------------

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _sse(self, data: Any, event: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
        self.wfile.write(frame.encode())
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "stub-model", "object": "model", "owned_by": "stub"}],
                             "models": [{"name": "models/stub-model"}]})
            return
        self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        path = self.path.split("?")[0]
        if path.endswith("/messages"):
            api = "anthropic"
        elif path.endswith("/responses"):
            api = "responses"
        elif path.endswith("/chat/completions"):
            api = "chat"
        elif ":streamGenerateContent" in path or ":generateContent" in path:
            api = "gemini"
        elif path.endswith("/count_tokens") or ":countTokens" in path:
            self._json(200, {"input_tokens": USAGE_IN, "totalTokens": USAGE_IN})
            return
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        text, has_result = _last_user(api, body)
        streaming = ((api == "gemini" and ":streamGenerateContent" in path)
                     or (api != "gemini" and bool(body.get("stream"))))
        tool = _pick_tool(api, body, self.owner.workdir) if "STUB_TOOL" in text and not has_result else None
        if "STUB_ERROR" in text:
            mode = "error"
        elif tool is not None:
            mode = "tool"
        elif not streaming:
            mode = "side"
        else:
            mode = "tool_done" if "STUB_TOOL" in text else "answer"
        exchange = Exchange(api, self.path, body, mode, time.time())
        self.owner.record(exchange)
        if mode == "error":
            self._error(api)
            return
        if not streaming:
            self._plain(api, body)
            return
        pieces = [TOOL_DONE] if mode == "tool_done" else list(self.owner.chunks)
        getattr(self, f"_stream_{api}")(exchange, pieces, tool, body)

    # -- errors and non-streaming side calls ----------------------------------------------------

    def _error(self, api: str) -> None:
        if api == "anthropic":
            self._json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": ERROR_TEXT}})
        elif api == "gemini":
            self._json(400, {"error": {"code": 400, "message": ERROR_TEXT, "status": "INVALID_ARGUMENT"}})
        else:
            self._json(400, {"error": {"message": ERROR_TEXT, "type": "invalid_request_error",
                                       "param": None, "code": "invalid_request"}})

    def _plain(self, api: str, body: dict[str, Any]) -> None:
        """Side calls (titles, routing, quota checks): a short complete answer, no stream."""
        usage_a = {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}
        if api == "anthropic":
            self._json(200, {"id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
                             "model": body.get("model", "stub-model"), "stop_reason": "end_turn",
                             "content": [{"type": "text", "text": "Stub title"}], "usage": usage_a})
        elif api == "gemini":
            route = json.dumps({"reasoning": "stub", "model_choice": "flash"})
            self._json(200, {"candidates": [{"content": {"role": "model", "parts": [{"text": route}]},
                                             "finishReason": "STOP", "index": 0}],
                             "usageMetadata": {"promptTokenCount": USAGE_IN, "candidatesTokenCount": USAGE_OUT,
                                               "totalTokenCount": USAGE_IN + USAGE_OUT}})
        elif api == "chat":
            self._json(200, {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
                             "model": body.get("model", "stub-model"),
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "Stub title"}}],
                             "usage": {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
                                       "total_tokens": USAGE_IN + USAGE_OUT}})
        else:
            self._json(200, _response_obj("completed", [_message_item("msg_side", "Stub title")], body))

    def _paced(self, exchange: ModelStub | Exchange, pieces: list[str]) -> Iterator[tuple[int, str]]:
        """Yield the pieces with the configured delay between them, recording send times."""
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(self.owner.delay)
            yield i, piece
            if isinstance(exchange, Exchange):
                exchange.chunk_times.append(time.time())

    # -- Anthropic Messages ---------------------------------------------------------------------

    def _stream_anthropic(self, exchange: Exchange, pieces: list[str], tool: tuple[str, dict[str, Any]] | None,
                          body: dict[str, Any]) -> None:
        self._sse_start()
        msg_id = f"msg_{uuid.uuid4().hex[:16]}"
        self._sse({"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": body.get("model", "stub-model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": USAGE_IN, "output_tokens": 1}}}, "message_start")
        if tool is not None:
            name, args = tool
            self._sse({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:16]}", "name": name, "input": {}}},
                "content_block_start")
            self._sse({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "input_json_delta", "partial_json": json.dumps(args)}}, "content_block_delta")
            self._sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            stop = "tool_use"
        else:
            self._sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                      "content_block_start")
            for _, piece in self._paced(exchange, pieces):
                self._sse({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
            self._sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            stop = "end_turn"
        self._sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                   "usage": {"output_tokens": USAGE_OUT}}, "message_delta")
        self._sse({"type": "message_stop"}, "message_stop")

    # -- OpenAI Responses ---------------------------------------------------------------------

    def _stream_responses(self, exchange: Exchange, pieces: list[str], tool: tuple[str, dict[str, Any]] | None,
                          body: dict[str, Any]) -> None:
        self._sse_start()
        resp_id = f"resp_{uuid.uuid4().hex[:16]}"
        seq = iter(range(10_000))
        self._sse({"type": "response.created", "sequence_number": next(seq),
                   "response": _response_obj("in_progress", [], body, resp_id)}, "response.created")
        if tool is not None:
            name, args = tool
            item = {"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:12]}", "status": "completed",
                    "call_id": f"call_{uuid.uuid4().hex[:12]}", "name": name, "arguments": json.dumps(args)}
            self._sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                       "item": {**item, "status": "in_progress", "arguments": ""}}, "response.output_item.added")
            self._sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0,
                       "item": item}, "response.output_item.done")
            output = [item]
        else:
            item_id = f"msg_{uuid.uuid4().hex[:12]}"
            self._sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                       "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
                                "content": []}}, "response.output_item.added")
            self._sse({"type": "response.content_part.added", "sequence_number": next(seq), "item_id": item_id,
                       "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}, "response.content_part.added")
            for _, piece in self._paced(exchange, pieces):
                self._sse({"type": "response.output_text.delta", "sequence_number": next(seq), "item_id": item_id,
                           "output_index": 0, "content_index": 0, "delta": piece}, "response.output_text.delta")
            text = "".join(pieces)
            self._sse({"type": "response.output_text.done", "sequence_number": next(seq), "item_id": item_id,
                       "output_index": 0, "content_index": 0, "text": text}, "response.output_text.done")
            done = _message_item(item_id, text)
            self._sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0,
                       "item": done}, "response.output_item.done")
            output = [done]
        self._sse({"type": "response.completed", "sequence_number": next(seq),
                   "response": _response_obj("completed", output, body, resp_id)}, "response.completed")

    # -- OpenAI Chat Completions ------------------------------------------------------------------

    def _stream_chat(self, exchange: Exchange, pieces: list[str], tool: tuple[str, dict[str, Any]] | None,
                     body: dict[str, Any]) -> None:
        self._sse_start()
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", "stub-model")}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            self._sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        chunk({"role": "assistant", "content": ""})
        if tool is not None:
            name, args = tool
            chunk({"tool_calls": [{"index": 0, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                   "function": {"name": name, "arguments": json.dumps(args)}}]})
            chunk({}, "tool_calls")
        else:
            for _, piece in self._paced(exchange, pieces):
                chunk({"content": piece})
            chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            self._sse({**base, "choices": [], "usage": {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
                                                        "total_tokens": USAGE_IN + USAGE_OUT}})
        self._sse("[DONE]")

    # -- Gemini ------------------------------------------------------------------------------------

    def _stream_gemini(self, exchange: Exchange, pieces: list[str], tool: tuple[str, dict[str, Any]] | None,
                       body: dict[str, Any]) -> None:
        self._sse_start()
        usage = {"promptTokenCount": USAGE_IN, "candidatesTokenCount": USAGE_OUT,
                 "totalTokenCount": USAGE_IN + USAGE_OUT}
        if tool is not None:
            name, args = tool
            self._sse({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": name, "args": args}}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage, "modelVersion": "stub-model"})
            return
        for i, piece in self._paced(exchange, pieces):
            last = i == len(pieces) - 1
            cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}
            frame: dict[str, Any] = {"candidates": [cand], "modelVersion": "stub-model"}
            if last:
                cand["finishReason"] = "STOP"
                frame["usageMetadata"] = usage
            self._sse(frame)


def _message_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _response_obj(status: str, output: list[dict[str, Any]], body: dict[str, Any],
                  resp_id: str | None = None) -> dict[str, Any]:
    return {"id": resp_id or f"resp_{uuid.uuid4().hex[:16]}", "object": "response", "created_at": int(time.time()),
            "status": status, "model": body.get("model", "stub-model"), "output": output,
            "usage": {"input_tokens": USAGE_IN, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": USAGE_OUT, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": USAGE_IN + USAGE_OUT} if status == "completed" else None}
