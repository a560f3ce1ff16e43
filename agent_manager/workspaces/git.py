"""The one place that runs git, hardened.

Why every call goes through here: a repository an agent has worked in is hostile input. Its
``config``, hooks and ``.gitattributes`` can name programs that git would run *on the host* the
next time the service touches it (hooks, ``core.fsmonitor``, filters, diff drivers, pagers,
credential helpers). So the service's git never runs hooks, never prompts, never uses a pager
or fsmonitor, signs its own commits with an explicit identity, and is always pointed at an
explicit ``GIT_DIR`` the service created (never at whatever ``.git`` it finds in a worktree).
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent_manager.errors import AgentManagerError, BadRequest

AUTHOR_NAME = "Agent Manager"
AUTHOR_EMAIL = "agent-manager@localhost"
HEX_RE = re.compile(r"^[0-9a-f]{40}$")
# -c options on every invocation: no code from the repository's own config may run.
HARDENING = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.pager=cat",
             "-c", "core.askPass=", "-c", "credential.helper=", "-c", "protocol.ext.allow=never",
             "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.untrackedCache=false",
             "-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main")
BASE_ENV = {
    "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C",
    "GIT_AUTHOR_NAME": AUTHOR_NAME, "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
    "GIT_COMMITTER_NAME": AUTHOR_NAME, "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
    "GIT_NO_REPLACE_OBJECTS": "1", "GIT_PAGER": "cat", "GIT_EDITOR": "true",
}
TIMEOUT_S = 600.0


class GitError(AgentManagerError):
    """A git command failed; ``stderr`` says why (shown to the user as is, it holds no secrets)."""

    status = 409
    code = "git_error"

    def __init__(self, message: str, returncode: int = 1, stderr: str = "") -> None:
        super().__init__(message, {"stderr": stderr[-2000:]} if stderr else None)
        self.returncode = returncode
        self.stderr = stderr


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace").strip()


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: nothing of the service's secrets, only what git needs."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
           "HOME": os.environ.get("HOME", "/nonexistent"), **BASE_ENV}
    env.update(extra or {})
    return env


async def run(args: list[str], *, cwd: Path | None = None, git_dir: Path | None = None,
              work_tree: Path | None = None, index: Path | None = None, env: dict[str, str] | None = None,
              stdin: bytes | None = None, check: bool = True, timeout: float = TIMEOUT_S,
              ok_codes: tuple[int, ...] = (0,)) -> Result:
    """Run ``git HARDENING args``; raises GitError unless the exit code is in ``ok_codes``."""
    extra = dict(env or {})
    if git_dir is not None:
        extra["GIT_DIR"] = str(git_dir)
    if work_tree is not None:
        extra["GIT_WORK_TREE"] = str(work_tree)
    if index is not None:
        extra["GIT_INDEX_FILE"] = str(index)
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", *HARDENING, *args, cwd=str(cwd) if cwd else "/", env=environment(extra),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except FileNotFoundError as exc:
        raise GitError("git is not installed on this host (apt-get install git)", 127) from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    result = Result(proc.returncode or 0, out, err.decode(errors="replace"))
    if check and result.code not in ok_codes:
        what = args[0] if args else "git"
        first = result.err.strip().splitlines()[-1:] or [f"exit code {result.code}"]
        raise GitError(f"git {what} failed: {first[0]}", result.code, result.err)
    return result


async def rev(ref: str, *, git_dir: Path, kind: str = "commit") -> str | None:
    """The object id ``ref`` names (peeled to ``kind``), or None."""
    if ref.startswith("-"):
        raise BadRequest(f"invalid ref {ref!r}")
    found = await run(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{{kind}}}"],
                      git_dir=git_dir, check=False)
    return found.text if found.code == 0 and HEX_RE.match(found.text) else None


async def is_ancestor(ancestor: str, descendant: str, *, git_dir: Path) -> bool:
    result = await run(["merge-base", "--is-ancestor", ancestor, descendant], git_dir=git_dir, check=False)
    return result.code == 0


def valid_ref_name(name: str) -> bool:
    """git check-ref-format's rules, enough to refuse anything odd before it reaches git."""
    if not name or name.startswith(("-", "/")) or name.endswith(("/", ".", ".lock")) or ".." in name:
        return False
    if any(c in name for c in " ~^:?*[\\\x7f") or "@{" in name or "//" in name:
        return False
    return all(ord(c) >= 32 for c in name) and not any(p.startswith(".") for p in name.split("/"))


def read_ref_file(path: Path) -> str | None:
    """An object id from a ref file an agent could have tampered with: never follows a link,
    reads at most 100 bytes, accepts only 40 hex digits."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        data = os.read(fd, 100).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return data if HEX_RE.match(data) else None
