"""The Daytona worker's wire format: length-prefixed JSON frames over the worker's pipes.

Why a process and this format (issue 15, notes 15f/15g): the SDK's work for thousands of
runs shared one GIL with the HTTP loop when it ran on a thread; in its own process it does
not. The service and the worker (``daytona_worker``) exchange frames: a 4-byte big-endian
length, then a UTF-8 JSON array of messages (everything one side had ready in one tick of its
loop). JSON, not pickle: neither side ever runs code because of what it reads, and a frame
longer than ``MAX_FRAME`` ends the link. Bytes (PTY data, stdin, files) travel as base64.

Messages are objects with a type ``t``:
- service → worker: ``hello`` (settings, the API key among them; first and once), ``call``
  (``c`` an id, ``op`` an operation, its arguments), ``drop`` (the caller of call ``c`` went
  away), ``ack`` (``n`` output items of stream ``i`` were read), ``abandon`` (stream ``i``
  has no reader any more);
- worker → service: ``ret`` (call ``c``'s value ``v`` or error ``e``), ``o`` (output of
  stream ``i``: ``p`` as ``[stream, text]`` pairs or ``b`` base64 bytes, ``n`` items),
  ``end`` (stream ``i`` is over), ``x`` (run ``i`` exited: ``code`` or error ``e``, ``info``),
  ``live`` (commands running now), ``cs`` (one create took ``v`` seconds).
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from agent_manager.errors import ExecutionError, ExecutorUnavailable
from agent_manager.executors.base import ExecSpec, PortableRepo, Resources
from agent_manager.executors.daytona_settings import DaytonaSettings

HEADER = struct.Struct(">I")
# Frames larger than this end the link (a run's inputs travel as files on this host; the biggest
# legitimate message is a spec with inline files and stdin, bounded by the run request's own limits).
MAX_FRAME = 64 * 1024 * 1024
SPLIT_AT = 1024 * 1024  # a tick's messages beyond this many bytes go out in several frames
Message = dict[str, Any]


class WireError(Exception):
    """A frame that breaks the protocol: the link is ended, never guessed at."""


def encode(messages: list[Message]) -> bytes:
    """One or more frames (split past ``SPLIT_AT``, so no reader ever needs one huge buffer).
    ASCII JSON: a string that is not valid Unicode (a lone surrogate from an undecodable file
    name in an error message) still travels, escaped, instead of failing the whole frame."""
    body = json.dumps(messages, separators=(",", ":")).encode("ascii")
    if len(body) > SPLIT_AT and len(messages) > 1:
        half = len(messages) // 2
        return encode(messages[:half]) + encode(messages[half:])
    if len(body) > MAX_FRAME:
        raise WireError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def encode_all(messages: list[Message]) -> tuple[bytes, list[Message]]:
    """The frames for ``messages``, and the messages that could not be sent (each larger than
    ``MAX_FRAME`` on its own), which the caller answers with an error instead of losing the rest."""
    try:
        return encode(messages), []
    except WireError:
        frames, refused = [], []
        for message in messages:
            try:
                frames.append(encode([message]))
            except WireError:
                refused.append(message)
        return b"".join(frames), refused


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise WireError(f"frame of {length} bytes announced (limit {MAX_FRAME})")
    return int(length)


def decode(body: bytes) -> list[Message]:
    try:
        messages = json.loads(body)
    except ValueError as exc:
        raise WireError(f"frame is not JSON: {exc}") from None
    if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("t"), str)
                                                 for m in messages):
        raise WireError("frame is not a list of typed messages")
    return messages


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise WireError("bytes expected as base64 text")
    return base64.b64decode(text, validate=True)


def error_of(exc: BaseException) -> Message:
    """An exception as the other side re-raises it: its kind and its (user-facing) message."""
    kind = "unavailable" if isinstance(exc, ExecutorUnavailable) else "execution"
    message = getattr(exc, "message", None) if isinstance(exc, ExecutionError | ExecutorUnavailable) else None
    return {"k": kind, "m": str(message or exc or type(exc).__name__)}


def raise_error(error: Message) -> ExecutionError | ExecutorUnavailable:
    message = str(error.get("m") or "Daytona worker error")
    return ExecutorUnavailable(message) if error.get("k") == "unavailable" else ExecutionError(message)


def section_out(section: DaytonaSettings) -> Message:
    """Every field of ``[daytona]``, the key in clear text: it only ever travels through the pipe."""
    values = section.model_dump()
    key = section.api_key
    values["api_key"] = key.get_secret_value() if isinstance(key, SecretStr) else None
    return values


def section_in(values: Message) -> DaytonaSettings:
    return DaytonaSettings.model_validate(values)


def spec_out(spec: ExecSpec) -> Message:
    """What a Daytona run or terminal uses of an ``ExecSpec`` (host paths absolute: the worker
    reads the workspace and writes outputs and changes there, as the same user)."""
    portable = spec.portable
    return {
        "argv": list(spec.argv), "env": dict(spec.env),
        "workspace": str(spec.workspace.absolute()) if spec.workspace is not None else None,
        "cwd": spec.cwd, "stdin": b64(spec.stdin) if spec.stdin is not None else None,
        "timeout_s": spec.timeout_s, "network": spec.network, "labels": dict(spec.labels),
        "resources": {"cpu": spec.resources.cpu, "memory_mb": spec.resources.memory_mb,
                      "disk_gb": spec.resources.disk_gb},
        "files": {rel: b64(data) for rel, data in spec.files.items()}, "outputs": list(spec.outputs),
        "portable": None if portable is None else {
            "bundle": str(portable.bundle.absolute()), "setup": portable.setup, "collect": portable.collect,
            "changes": str(portable.changes.absolute()), "args": list(portable.args)},
    }


def spec_in(data: Message) -> ExecSpec:
    try:
        portable = data.get("portable")
        res = data.get("resources") or {}
        return ExecSpec(
            argv=[str(a) for a in data["argv"]], env={str(k): str(v) for k, v in data["env"].items()},
            workspace=Path(data["workspace"]) if data.get("workspace") else None, cwd=data.get("cwd"),
            stdin=unb64(data["stdin"]) if data.get("stdin") is not None else None,
            timeout_s=float(data["timeout_s"]), network=bool(data["network"]),
            labels={str(k): str(v) for k, v in data["labels"].items()},
            resources=Resources(cpu=res.get("cpu"), memory_mb=res.get("memory_mb"), disk_gb=res.get("disk_gb")),
            files={str(rel): unb64(v) for rel, v in data["files"].items()},
            outputs=[str(o) for o in data["outputs"]],
            portable=None if portable is None else PortableRepo(
                bundle=Path(portable["bundle"]), setup=str(portable["setup"]), collect=str(portable["collect"]),
                changes=Path(portable["changes"]), args=tuple(str(a) for a in portable["args"])))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise WireError(f"malformed run spec: {exc!r}") from None
