"""Repositories and agents for the workspace tests: a real git repository with text, binary and
to-be-renamed files, and a generic agent whose prompt is a shell script run in its workspace."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
from helpers import wait_run

GIT_ENV = {"GIT_AUTHOR_NAME": "User", "GIT_AUTHOR_EMAIL": "user@example.com", "GIT_COMMITTER_NAME": "User",
           "GIT_COMMITTER_EMAIL": "user@example.com", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}
# The edits every backend test makes: modify, delete, add, rename, change a binary file.
EDIT_SCRIPT = ("printf 'line 1\\nline 2 changed\\n' > a.txt && rm b.txt && echo 'brand new' > new.txt"
               " && mv old.txt renamed.txt && printf '\\000\\001\\002\\003' > data.bin")
EXPECTED = {"a.txt": "modified", "b.txt": "deleted", "new.txt": "added", "renamed.txt": "renamed",
            "data.bin": "modified"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("line 1\nline 2\n")
    (path / "b.txt").write_text("to be deleted\n")
    (path / "old.txt").write_text("".join(f"rename me, line {i}\n" for i in range(20)))
    (path / "data.bin").write_bytes(bytes(range(256)))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` (``.git`` included) by content hash: byte-identical or not."""
    found = {}
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in files:
            full = Path(root) / name
            if full.is_symlink():
                found[str(full.relative_to(path))] = "link:" + os.readlink(full)
            else:
                found[str(full.relative_to(path))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return found


async def add_shell_agent(client: httpx.AsyncClient, name: str = "sh-agent", **extra: Any) -> dict[str, Any]:
    r = await client.post("/api/agents", json={"name": name, "kind": "generic", "command": "sh",
                                               "args": ["-c", "{prompt}"], **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def add_project(client: httpx.AsyncClient, repo: Path, name: str = "proj") -> dict[str, Any]:
    r = await client.post("/api/projects", json={"name": name, "path": str(repo)})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def run_on_project(client: httpx.AsyncClient, prompt: str, project: str = "proj", agent: str = "sh-agent",
                         timeout: float = 60, **extra: Any) -> dict[str, Any]:
    r = await client.post("/api/runs", json={"agent": agent, "prompt": prompt, "project": project, **extra})
    assert r.status_code == 201, r.text
    return await wait_run(client, r.json()["id"], timeout=timeout)


def statuses(diff: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["status"] for f in diff["files"]}
