"""The executor interface: one small protocol every backend implements.

A backend only knows how to start a process somewhere and hand back its output; run
bookkeeping, timeouts, parsing and persistence live in ``agent_manager.runs``. The run layer
enforces ``timeout_s`` itself (by calling ``Execution.cancel``), so every backend gets the
same timeout semantics; backends may use the value for their own server-side limits too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client import Histogram

from agent_manager.models import Stream


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Resources:
    """Declared needs of a run; ``None`` means "no opinion"."""

    cpu: float | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None


@dataclass(frozen=True)
class Mount:
    """An extra path inside an isolated backend (the sandbox); host backends ignore it.

    Either ``source`` (a host path, bound read-only unless ``writable``) or ``data`` (the text
    of a read-only file made for this run) appears at ``target``. Workspaces use this to give
    a worktree's ``.git`` what it needs and nothing more of the repository.
    """

    target: str
    source: Path | None = None
    data: str | None = None
    writable: bool = False


@dataclass(frozen=True)
class PortableRepo:
    """A git workspace in a form a remote backend can carry without knowing git (workspaces.portable).

    The backend uploads ``bundle``, runs ``setup`` (``sh -c SETUP am BUNDLE WORKSPACE STATE ARGS...``)
    before the command and ``collect`` (``sh -c COLLECT am BUNDLE WORKSPACE STATE OUT ARGS...``)
    after it, then downloads OUT to ``changes`` on this host. The paths are the backend's choice.
    """

    bundle: Path
    setup: str
    collect: str
    changes: Path
    args: tuple[str, ...] = ()


@dataclass
class ExecSpec:
    """Everything a backend needs to start one process.

    ``argv[0]`` is the executable; the prompt is already one element of ``argv`` or is in
    ``stdin``. ``env`` is the complete environment the agent should see on top of a minimal
    base the backend chooses (never the service's own environment). ``workspace`` is a host
    directory the process may write; ``files`` are written into it before start and
    ``outputs`` (paths relative to it) are brought back after exit by remote backends.
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workspace: Path | None = None
    cwd: str | None = None
    stdin: bytes | None = None
    timeout_s: float = 600.0
    resources: Resources = field(default_factory=Resources)
    network: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    # A PTY slave fd (interactive terminals, local and sandbox only): the process gets it as
    # stdin/stdout/stderr and as its controlling terminal; ``stdin`` is then ignored.
    tty: int | None = None
    mounts: list[Mount] = field(default_factory=list)
    portable: PortableRepo | None = None
    run_as: str | None = None
    """An OS user name the process becomes (local backend; only when the service is root).
    ``None``: the service's own user."""
    hand_over: bool = True
    """Whether the workspace is the service's own, to be chowned to the OS user the run becomes
    (sandbox user, run_as). False for a directory the admin chose (an agent's ``working_dir``):
    its files keep their owners — a recursive chown there would give e.g. a 0600 key to that user."""


class Chunk:
    """A piece of one stream's output. A pipe reader may hand ASCII output over undecoded
    (``raw``): the service stores and sends those bytes as they are (ASCII is its own UTF-8)
    and decodes them only where text is needed (an agent's parser), so a fast writer's bytes
    are not turned into text and back for nothing."""

    __slots__ = ("stream", "_text", "_raw")

    def __init__(self, stream: Stream, text: str | None = None, *, raw: bytes | None = None) -> None:
        if (text is None) == (raw is None):
            raise ValueError("a chunk has either text or ASCII bytes")
        self.stream = stream
        self._text = text
        self._raw = raw

    @property
    def text(self) -> str:
        if self._text is None:
            assert self._raw is not None
            self._text = self._raw.decode("ascii")
        return self._text

    @property
    def body(self) -> str | bytes:
        """What is stored: the ASCII bytes as read, else the text."""
        if self._raw is not None:
            return self._raw
        assert self._text is not None
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chunk) and (self.stream, self.text) == (other.stream, other.text)

    def __hash__(self) -> int:
        return hash((self.stream, self.text))

    def __repr__(self) -> str:
        return f"Chunk({self.stream!r}, {self.text!r})"


@runtime_checkable
class Execution(Protocol):
    """One started process (or sandboxed command)."""

    info: dict[str, str]
    """Backend facts worth recording on the run, e.g. ``{"sandbox_id": ...}``."""

    def output(self) -> AsyncIterator[Chunk]:
        """Chunks of stdout/stderr as they arrive; ends when both streams are closed."""
        ...

    async def wait(self) -> int:
        """The exit code (negative signal number when killed, as in ``subprocess``)."""
        ...

    async def cancel(self) -> None:
        """End the whole process tree or sandbox, escalating; safe to call twice."""
        ...


@runtime_checkable
class Executor(Protocol):
    name: str

    async def available(self) -> Availability:
        """Whether this backend can run anything now, and if not, why (said to the user)."""
        ...

    async def start(self, spec: ExecSpec) -> Execution:
        """Start the process. Raises ``ExecutorUnavailable`` or ``ExecutionError``.

        A missing executable raises ``ExecutionError`` with a message naming it.
        """
        ...

    async def close(self) -> None:
        """Release clients and end whatever this backend still runs (service shutdown)."""
        ...


@runtime_checkable
class KeepsSandboxes(Protocol):
    """An executor whose runs live in sandboxes: ``/metrics`` shows how many are alive and,
    when the backend creates them remotely, how long creating one took."""

    create_seconds: Histogram | None
    """Seconds per successful create (``agent_manager.metrics.create_histogram``), or None."""

    def sandboxes_live(self) -> int:
        """Sandboxes of this executor running a command now."""
        ...
