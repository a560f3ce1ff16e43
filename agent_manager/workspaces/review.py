"""Reviewing a workspace: its diff against the base, and merging it into the base branch.

A merge is computed first, entirely inside the service's copy of the repository
(``git merge-tree --write-tree``, objects quarantined in a temporary directory), so a conflict
is reported with its paths while the user's repository stays byte-for-byte as it was. Only a
clean result reaches the user's repository: as a fast-forward of their checkout when the base
branch is checked out there (refused when it is dirty in the files concerned), else as a
compare-and-swap ref update, so a merge racing another one fails instead of losing either.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from agent_manager.errors import Conflict
from agent_manager.workspaces import git

PATCH_LIMIT = 8 * 1024 * 1024
STATUS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "added", "T": "modified"}


def _split(out: bytes) -> list[str]:
    return out.decode("utf-8", errors="surrogateescape").split("\0")


async def files(repo: Path, a: str, b: str) -> list[dict[str, Any]]:
    """Per-file status and line counts between two commits (renames detected)."""
    names = _split((await git.run(["diff", "--name-status", "-z", "-M", a, b], git_dir=repo)).out)
    entries: list[dict[str, Any]] = []
    i = 0
    while i < len(names) - 1:
        code = names[i]
        if code[:1] in ("R", "C"):
            entries.append({"path": names[i + 2], "old_path": names[i + 1], "status": STATUS[code[0]]})
            i += 3
        else:
            entries.append({"path": names[i + 1], "status": STATUS.get(code[:1], "modified")})
            i += 2
    counts = _split((await git.run(["diff", "--numstat", "-z", "-M", a, b], git_dir=repo)).out)
    stats: dict[str, tuple[int, int, bool]] = {}
    i = 0
    while i < len(counts) - 1:
        ins, dels, path = counts[i].split("\t", 2)
        if path == "":  # a rename: old and new path follow
            path, i = counts[i + 2], i + 3
        else:
            i += 1
        binary = ins == "-"
        stats[path] = (0 if binary else int(ins), 0 if binary else int(dels), binary)
    for entry in entries:
        added, removed, binary = stats.get(entry["path"], (0, 0, False))
        entry.update(insertions=added, deletions=removed, binary=binary)
        entry["path"] = entry["path"].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return entries


async def diff_stats(repo: Path, a: str, b: str) -> dict[str, int]:
    found = await files(repo, a, b)
    return {"files_changed": len(found), "insertions": sum(f["insertions"] for f in found),
            "deletions": sum(f["deletions"] for f in found)}


async def patch(repo: Path, a: str, b: str) -> str:
    """The unified patch, binary files included (``git apply`` takes it as is)."""
    out = (await git.run(["diff", "--binary", "-M", "--no-color", "--no-ext-diff", "--no-textconv", a, b],
                         git_dir=repo)).out
    return out.decode("utf-8", errors="replace")


async def _merge_tree(repo: Path, base_tip: str, head: str, quarantine: Path | None) -> tuple[str, list[str]]:
    env = {}
    if quarantine is not None:
        env = {"GIT_OBJECT_DIRECTORY": str(quarantine), "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(repo / "objects")}
    result = await git.run(["merge-tree", "--write-tree", "-z", "--name-only", "--no-messages", base_tip, head],
                           git_dir=repo, env=env, ok_codes=(0, 1))
    parts = [x for x in _split(result.out) if x]
    if result.code == 1:
        return parts[0], sorted(set(parts[1:]))
    return parts[0], []


async def merge_commit(repo: Path, base_tip: str, head: str, strategy: str, message: str) -> str:
    """The commit that merges ``head`` into ``base_tip``; Conflict (409, paths) leaves no trace."""
    quarantine = Path(tempfile.mkdtemp(prefix="am-merge-", dir=repo))
    try:
        _, conflicts = await _merge_tree(repo, base_tip, head, quarantine)
    finally:
        shutil.rmtree(quarantine, ignore_errors=True)
    if conflicts:
        raise Conflict(f"merging would conflict in {len(conflicts)} file(s): {', '.join(conflicts[:10])}",
                       [{"field": path, "message": "conflict"} for path in conflicts])
    tree, _ = await _merge_tree(repo, base_tip, head, None)
    parents = ["-p", base_tip] + (["-p", head] if strategy == "merge" else [])
    return (await git.run(["commit-tree", tree, *parents, "-m", message], git_dir=repo)).text


async def _checkouts(user: Path, branch: str) -> list[Path]:
    """Work trees of the user's repository that have ``branch`` checked out."""
    listing = await git.run(["worktree", "list", "--porcelain", "-z"], cwd=user)
    found, current = [], None
    for field in _split(listing.out):
        if field.startswith("worktree "):
            current = Path(field[len("worktree "):])
        elif field == f"branch refs/heads/{branch}" and current is not None:
            found.append(current)
    return found


async def _dirty(checkout: Path) -> set[str]:
    """Paths modified, staged or untracked in a checkout, read without writing its index."""
    status = await git.run(["status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"],
                           cwd=checkout, env={"GIT_OPTIONAL_LOCKS": "0"})
    return {entry[3:] for entry in _split(status.out) if len(entry) > 3}


async def deliver(user: Path | None, repo: Path, branch: str, old: str, new: str) -> None:
    """Move the base branch from ``old`` to ``new``: in the user's repository for a local project
    (their checkout moves along when it has the branch), else in the service's clone."""
    if user is None:
        moved = await git.run(["update-ref", "-m", "agent-manager: merge", f"refs/heads/{branch}", new, old],
                              git_dir=repo, check=False)
        if moved.code != 0:
            raise Conflict(f"the base branch {branch!r} moved during the merge; try again")
        return
    concerned = set(_split((await git.run(["diff", "--name-only", "-z", "--no-renames", old, new],
                                          git_dir=repo)).out)) - {""}
    checkouts = await _checkouts(user, branch)
    for checkout in checkouts:
        dirty = sorted(concerned & await _dirty(checkout))
        if dirty:
            raise Conflict(f"{checkout} has uncommitted changes in files this merge changes: {', '.join(dirty[:10])};"
                           " commit or stash them first",
                           [{"field": path, "message": "uncommitted changes"} for path in dirty])
    ref = f"refs/agent-manager/merge-{new[:12]}"
    await git.run(["update-ref", ref, new], git_dir=repo)
    try:
        await git.run(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", str(repo), ref], cwd=user)
    finally:
        await git.run(["update-ref", "-d", ref], git_dir=repo, check=False)
    if checkouts:
        merged = await git.run(["merge", "--ff-only", "--quiet", "--no-edit", new], cwd=checkouts[0], check=False)
        if merged.code != 0:
            raise Conflict(f"could not move the checkout at {checkouts[0]}: {merged.err.strip()[-300:]}")
        return
    moved = await git.run(["update-ref", "-m", "agent-manager: merge", f"refs/heads/{branch}", new, old],
                          cwd=user, check=False)
    if moved.code != 0:
        raise Conflict(f"the base branch {branch!r} moved during the merge; try again")
