"""One workspace: a worktree of the project's repository on its own branch, and its lifecycle.

Created from a resolved base commit; used by runs (local: the worktree as cwd; sandbox: the
worktree at /workspace plus a private git dir; Daytona: the portable form); settled after each
run: the agent's own commits are kept when they extend the branch, everything left in the work
tree is committed on top with the service's identity, and the statistics are recorded.

Settling never trusts the worktree's ``.git``: git runs with ``GIT_DIR`` = the project's
repository, a private index and the worktree as ``GIT_WORK_TREE``; the worktree's links are
rewritten by the service afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_manager.executors.base import ExecSpec, Mount, PortableRepo
from agent_manager.plugins import WorkspaceAccess
from agent_manager.store.database import new_id
from agent_manager.workspaces import git, portable
from agent_manager.workspaces import records as rec
from agent_manager.workspaces.review import diff_stats

Access = WorkspaceAccess
"""How a backend reaches a workspace: ``direct`` (the worktree and its git as they are: an
agent on this host), ``private_git`` (an isolated backend on this host: the worktree plus a
private git dir, through ``ExecSpec.mounts``), ``portable`` (a remote backend: a bundle in and
a patch out, through ``ExecSpec.portable``). plugins.workspace_access derives it from capabilities."""
INSIDE_GIT = "/.agent-manager/git"
INSIDE_OBJECTS = "/.agent-manager/objects"
MESSAGE_MAX = 200


@dataclass
class Paths:
    repo: Path
    worktree: Path
    admin: Path
    branch: str

    @classmethod
    def of(cls, ws: dict[str, Any], project: dict[str, Any]) -> Paths:
        repo = Path(project["repo"])
        worktree = Path(ws["path"])
        return cls(repo, worktree, repo / "worktrees" / worktree.name, ws["branch"])


def branch_for(kind: str, owner_ref: str) -> str:
    """``am/<run id>``, ``am/<conversation id>``, ``am/<orchestration id>/steps/<step>``."""
    if kind == "step":
        orch, step = owner_ref.split(":", 1)
        return f"am/{orch}/steps/{step}"
    if kind == "orchestration":
        return f"am/{owner_ref}/result"
    return f"am/{owner_ref}"


def new_record(db: Any, home: Path, project: dict[str, Any], base: str, commit: str, kind: str,
               owner_ref: str, owner: str | None) -> dict[str, Any]:
    ws_id = new_id("ws")
    return rec.add_workspace(db, {
        "id": ws_id, "project_id": project["id"], "kind": kind, "owner_ref": owner_ref, "owner": owner,
        "branch": branch_for(kind, owner_ref), "base": base, "base_commit": commit, "head_commit": commit,
        "path": str(home / "worktrees" / ws_id)})


def commit_message(prompt: str) -> str:
    """The prompt's first non-empty line, bounded: what a reviewer reads in ``git log``."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "") or "Agent run"
    return first if len(first) <= MESSAGE_MAX else first[: MESSAGE_MAX - 1] + "…"


async def ensure(p: Paths, base_commit: str) -> None:
    """A usable worktree at ``p.worktree`` on ``p.branch``: created, or re-created when removed
    by hand, or re-linked when an agent deleted or replaced its ``.git``."""
    gitfile = p.worktree / ".git"
    if p.worktree.is_dir() and p.admin.is_dir():
        relink(p)
        return
    if p.worktree.exists() or p.admin.exists():  # half of a worktree (removed by hand): start again
        await git.run(["worktree", "prune"], git_dir=p.repo)
        await asyncio.to_thread(shutil.rmtree, p.worktree, True)
    p.worktree.parent.mkdir(parents=True, exist_ok=True)
    if await git.rev(f"refs/heads/{p.branch}", git_dir=p.repo):
        await git.run(["worktree", "add", "--quiet", str(p.worktree), p.branch], git_dir=p.repo)
    else:
        await git.run(["worktree", "add", "--quiet", "-b", p.branch, str(p.worktree), base_commit],
                      git_dir=p.repo)
    if not gitfile.is_file():
        raise git.GitError(f"git did not create the worktree {p.worktree}")


def relink(p: Paths) -> None:
    """Rewrite the files that tie worktree and repository together (an agent may have changed them)."""
    gitfile = p.worktree / ".git"
    if gitfile.is_symlink() or gitfile.is_file():
        gitfile.unlink()
    elif gitfile.is_dir():
        shutil.rmtree(gitfile)
    gitfile.write_text(f"gitdir: {p.admin}\n")
    p.admin.mkdir(parents=True, exist_ok=True)
    for name, text in (("gitdir", f"{gitfile}\n"), ("commondir", "../..\n"), ("HEAD", f"ref: refs/heads/{p.branch}\n")):
        target = p.admin / name
        if target.is_symlink() or target.is_dir():
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        target.write_text(text)
    for stray in ("config.worktree", "hooks"):
        path = p.admin / stray
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def sandbox_git(p: Paths, scratch: Path, tip: str) -> list[Mount]:
    """A private git dir for a sandboxed run: the agent gets a working repository (status, diff,
    log, commit) whose objects it reads from the project read-only and whose writes land in
    ``scratch``; neither the project's repository nor any config the service uses is writable."""
    if scratch.exists():
        shutil.rmtree(scratch)
    (scratch / "refs" / "heads" / p.branch).parent.mkdir(parents=True)
    (scratch / "refs" / "tags").mkdir()
    (scratch / "objects" / "info").mkdir(parents=True)
    (scratch / "objects" / "info" / "alternates").write_text(INSIDE_OBJECTS + "\n")
    (scratch / "refs" / "heads" / p.branch).write_text(tip + "\n")
    (scratch / "HEAD").write_text(f"ref: refs/heads/{p.branch}\n")
    (scratch / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
                                    f"[user]\n\tname = {git.AUTHOR_NAME}\n\temail = {git.AUTHOR_EMAIL}\n")
    with contextlib.suppress(OSError):
        shutil.copyfile(p.admin / "index", scratch / "index")
    return [Mount("/workspace/.git", data=f"gitdir: {INSIDE_GIT}\n"),
            Mount(INSIDE_GIT, source=scratch, writable=True),
            Mount(INSIDE_OBJECTS, source=p.repo / "objects")]


async def import_commits(p: Paths, scratch: Path, old: str) -> tuple[str, bool]:
    """The sandboxed agent's commits, copied into the project when they extend the branch.

    Returns the new tip (``old`` when nothing was committed) and whether the agent rewrote the
    history (then only its files count). Objects pass through ``pack-objects | index-pack``,
    which checks every one of them; the private git dir's config is never read."""
    tip = git.read_ref_file(scratch / "refs" / "heads" / p.branch)
    if tip is None or tip == old:
        return old, False
    _disarm(scratch / "objects", p.repo / "objects")
    env = {"GIT_ALTERNATE_OBJECT_DIRECTORIES": str(scratch / "objects")}
    check = await git.run(["merge-base", "--is-ancestor", old, tip], git_dir=p.repo, env=env, check=False)
    if check.code != 0:
        return old, True
    try:
        pack = await git.run(["pack-objects", "--revs", "--stdout", "-q"], git_dir=p.repo, env=env,
                             stdin=f"{tip}\n^{old}\n".encode())
        await git.run(["index-pack", "--stdin"], git_dir=p.repo, stdin=pack.out)
    except git.GitError:  # missing or corrupt objects: the commits are unusable, the files still count
        return old, True
    return (tip, False) if await git.rev(tip, git_dir=p.repo) else (old, True)


def _disarm(objects: Path, project_objects: Path) -> None:
    """Before the service reads a sandbox's object store: no symlinks (a pack linked to another
    repository on this host would smuggle its objects in), and alternates pointing only at the
    project itself (the agent could have named any directory of this host)."""
    for root, dirs, files in os.walk(objects):
        for name in [*dirs, *files]:
            path = Path(root) / name
            if path.is_symlink():
                path.unlink()
    info = objects / "info"
    if info.exists() and not info.is_dir():
        info.unlink()
    info.mkdir(exist_ok=True)
    for name in ("alternates", "http-alternates"):
        (info / name).unlink(missing_ok=True)
    (info / "alternates").write_text(f"{project_objects}\n")


async def settle(p: Paths, ws: dict[str, Any], message: str, *, scratch: Path | None = None,
                 changes: Path | None = None, service_files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Commit what the run left and return the fields to store (head, stats, note)."""
    old = ws["head_commit"]
    note = ""
    p.worktree.mkdir(parents=True, exist_ok=True)
    # 1. the agent's own commits: on the branch (local) or in the sandbox's private git dir
    tip = await git.rev(f"refs/heads/{p.branch}", git_dir=p.repo) or old
    rewritten = tip != old and not await git.is_ancestor(old, tip, git_dir=p.repo)
    if scratch is not None:
        tip, rewritten = await import_commits(p, scratch, old)
    if rewritten:
        note = "the agent rewrote the branch's history; its files were kept as one commit on the branch"
        tip = old
    index = p.repo / f"am-index-{p.worktree.name}"
    index.unlink(missing_ok=True)
    try:
        await git.run(["read-tree", tip], git_dir=p.repo, index=index)
        # 2. changes a remote sandbox sent back
        if changes is not None and changes.exists():
            try:
                await portable.apply(p.repo, p.worktree, index, changes)
            except git.GitError as exc:
                note = f"the remote sandbox's changes could not be applied ({exc.message}); kept in {changes}"
        # 3. files the service itself put there (prompt files) are not the agent's work
        for rel, data in (service_files or {}).items():
            target = p.worktree / rel
            with contextlib.suppress(OSError):
                if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
                    target.unlink()
        # 4. everything left in the work tree, committed on top
        await git.run(["add", "-A", "--", "."], git_dir=p.repo, work_tree=p.worktree, index=index, cwd=p.worktree)
        tree = (await git.run(["write-tree"], git_dir=p.repo, index=index)).text
        head = tip
        if tree != await git.rev(tip, git_dir=p.repo, kind="tree"):
            head = (await git.run(["commit-tree", tree, "-p", tip, "-m", message], git_dir=p.repo)).text
        await git.run(["update-ref", "-m", "agent-manager: settle", f"refs/heads/{p.branch}", head], git_dir=p.repo)
        # 5. the worktree is clean on its branch again, whatever the agent did to its .git
        relink(p)
        os.replace(index, p.admin / "index")
    finally:
        index.unlink(missing_ok=True)
    stats = await diff_stats(p.repo, ws["base_commit"], head)
    return {"head_commit": head, **stats, **({"note": note} if note else {})}


async def remove_worktree(p: Paths) -> None:
    """Remove the worktree directory and its admin entry (the branch stays)."""
    if p.worktree.exists():
        await asyncio.to_thread(shutil.rmtree, p.worktree, True)
    await git.run(["worktree", "prune"], git_dir=p.repo, check=False)


def spec_for(access: Access, p: Paths, ws: dict[str, Any], spec: ExecSpec, scratch: Path,
             portable_dir: Path) -> ExecSpec:
    """Point ``spec`` at the workspace the way its backend can use it (``Access``)."""
    spec.workspace = p.worktree
    if access == "private_git":
        spec.mounts = [*spec.mounts, *sandbox_git(p, scratch, ws["head_commit"])]
    elif access == "portable":
        changes = portable_dir / "changes.patch"
        changes.unlink(missing_ok=True)
        spec.portable = PortableRepo(bundle=portable_dir / "base.bundle", setup=portable.SETUP,
                                     collect=portable.COLLECT, changes=changes,
                                     args=(ws["head_commit"], p.branch))
    return spec
