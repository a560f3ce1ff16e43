"""What a run is asked to be, and the checks made when it is asked for.

The checks live here, not in the run lifecycle, because the API refuses bad requests with a
4xx before a run exists (a prompt the kernel would refuse, a working directory that is not
there): nothing is queued only to fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_manager.errors import TooLarge
from agent_manager.executors.base import Executor, Resources

if TYPE_CHECKING:
    from agent_manager.workspaces import Base

# Linux refuses one argv element of MAX_ARG_STRLEN (32 pages) bytes or more, NUL included.
MAX_ARG_BYTES = 32 * 4096 - 1
PROMPT_FILE_NAME = ".agent-manager-prompt-{run_id}.txt"


def working_dir_problem(path: str | None) -> str | None:
    """Why ``path`` cannot be an agent's working directory, or None. It is never created for the
    user: a typo must not become a new directory (as root, anywhere)."""
    if not path:
        return None
    target = Path(path)
    if not target.exists():
        return f"working_dir {path} does not exist; create it first"
    if not target.is_dir():
        return f"working_dir {path} is not a directory"
    return None


def check_argv_size(argv: list[str]) -> None:
    """Refuse, when the run is requested, an argv the kernel would refuse at exec."""
    for element in argv:
        size = len(element.encode("utf-8", "surrogatepass"))
        if size > MAX_ARG_BYTES:
            raise TooLarge(
                f"the prompt is too long to pass as one command-line argument ({size} bytes; the limit is "
                f"{MAX_ARG_BYTES} bytes). Shorten it, or give the agent's args the element {{prompt_file}} "
                "(generic agents) so the prompt is passed in a file.",
                [{"field": "prompt", "limit_bytes": MAX_ARG_BYTES, "size_bytes": size}])


def prompt_file_path(executor: Executor, workspace: Path, name: str) -> str:
    """The prompt file's path as the agent sees it: the backend says (``workspace_path``: the
    sandbox mounts the workspace elsewhere, a remote backend uploads it); by default the host
    path, which is right for any backend running the agent on this host."""
    seen = getattr(executor, "workspace_path", None)
    return str(seen(workspace, name)) if seen is not None else str(workspace.resolve() / name)


@dataclass
class RunRequest:
    """What to run; built by the API, the chat and the orchestration engine alike."""

    agent: dict[str, Any]
    prompt: str
    conversation_id: str | None = None
    backend: str | None = None
    step_backend: str | None = None
    timeout_s: float | None = None
    resources: Resources = field(default_factory=Resources)
    owner: str | None = None
    user_trusted: bool = True
    # Only the admin's runs may run as the service's own OS user (docs/security.md).
    user_admin: bool = True
    workspace: Path | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    # Run exactly this argv instead of the agent's CLI (orchestration `shell` steps); the
    # agent dict then only names the run and supplies env/backend/trust.
    argv: list[str] | None = None
    # Projects (DESIGN 3.7): an existing workspace to work in (conversation, plan step), or a
    # resolved base to branch a new one from for this run alone (``am/<run id>``).
    workspace_id: str | None = None
    new_workspace: Base | None = None
