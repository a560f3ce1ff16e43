"""Projects: a repository agents work on, and the service's own copy of it.

Why a copy: every project has a bare repository in the data directory (``projects/<id>.git``,
a ``--local`` clone, so objects are hard links and cost no space on the same disk). Worktrees,
run branches (``am/...``) and everything an agent touches live there, never in the user's
repository. The user's repository is read (to find ``base``) and written only by an explicit
merge. A ``git_url`` project is cloned into the same place and has no user checkout at all.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

from agent_manager.errors import BadRequest, Forbidden, ValidationFailed
from agent_manager.models import MASK
from agent_manager.settings import Settings
from agent_manager.store.database import Database, new_id
from agent_manager.workspaces import git
from agent_manager.workspaces import records as rec

REMOTE_URL = re.compile(r"^(https://|ssh://|git@[A-Za-z0-9.-]+:)")
LOCAL_URL = re.compile(r"^(file://|/)")


def shown_url(url: str | None) -> str | None:
    """``url`` as answers and the audit log show it: credentials in an https URL
    (``https://user:TOKEN@host/..``, or a token as the user name) become the mask, because
    every user may list projects. The stored URL keeps them, for fetching."""
    if url is None or not url.startswith("https://"):
        return url
    rest = url[len("https://"):]
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"https://{MASK}@{authority.rpartition('@')[2]}{slash}{path}"


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", [{"field": field, "message": message}])


async def _toplevel(path: Path) -> Path:
    """The top of the work tree ``path`` is in; a clear 422 when it is not a git repository."""
    if not path.is_dir():
        raise _invalid("path", f"{path} is not a directory")
    found = await git.run(["rev-parse", "--show-toplevel"], cwd=path, check=False,
                          env={"GIT_CEILING_DIRECTORIES": str(path.parent)})
    if found.code != 0 or not found.text:
        raise _invalid("path", f"{path} is not a git repository (with a work tree)")
    return Path(found.text)


async def current_branch(git_dir: Path | None = None, cwd: Path | None = None) -> str | None:
    found = await git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], git_dir=git_dir, cwd=cwd, check=False)
    return found.text or None if found.code == 0 else None


async def register(db: Database, settings: Settings, who: dict[str, Any], name: str, *, path: str | None,
                   git_url: str | None, base: str | None) -> dict[str, Any]:
    """Register a local repository (admin only) or clone ``git_url`` into the data directory."""
    if (path is None) == (git_url is None):
        raise _invalid("path", "give exactly one of path and git_url")
    admin = bool(who.get("admin"))
    if path is not None and not admin:
        raise Forbidden("only the admin may register a local path as a project")
    if git_url is not None:
        if git_url.startswith("-") or not (REMOTE_URL.match(git_url) or LOCAL_URL.match(git_url)):
            raise _invalid("git_url", "use an https://, ssh://, git@host:path, file:// URL or an absolute path")
        if LOCAL_URL.match(git_url) and not admin:
            raise Forbidden("only the admin may clone from this host's file system")
        if not admin and not git_url.startswith("https://"):
            raise Forbidden("users may only add https:// repositories (ssh would use the service's keys)")
    rec_id = new_id("proj")
    repo = settings.home / "projects" / f"{rec_id}.git"
    repo.parent.mkdir(parents=True, exist_ok=True)
    if db.one("SELECT 1 FROM projects WHERE name = ?", (name,)):
        rec.add_project(db, {"id": rec_id, "name": name, "repo": "", "default_base": ""})  # raises the 409
    try:
        if path is not None:
            top = await _toplevel(Path(path).expanduser().resolve())
            if (await git.run(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=top, check=False)).code:
                raise _invalid("path", f"{top} has no commits yet: commit something first")
            links = [] if _same_fs(top, repo) else ["--no-hardlinks"]
            await git.run(["clone", "--quiet", "--bare", "--local", *links, "--", str(top), str(repo)],
                          cwd=settings.home)
            default = base or await current_branch(cwd=top)
            source: dict[str, Any] = {"path": str(top)}
        else:
            assert git_url is not None
            cloned = await git.run(["clone", "--quiet", "--bare", "--", git_url, str(repo)], cwd=settings.home,
                                   check=False, timeout=1800)
            if cloned.code != 0:
                err = cloned.err.strip()[-400:].replace(git_url, str(shown_url(git_url)))
                raise _invalid("git_url", f"cannot clone {shown_url(git_url)}: {err}")
            default = base or await current_branch(git_dir=repo)
            source = {"git_url": git_url}
        if not default:
            raise _invalid("base", "the repository's HEAD is detached: give a base branch")
        if await resolve_in(repo, default, source.get("path")) is None:
            raise _invalid("base", f"base {default!r} not found in the repository")
        await git.run(["config", "core.logAllRefUpdates", "true"], git_dir=repo)
        return rec.add_project(db, {"id": rec_id, "name": name, "repo": str(repo), "default_base": default,
                                    "created_by": who.get("id"), **source})
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, repo, True)
        raise


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.parent.stat().st_dev
    except OSError:
        return False


async def resolve_in(repo: Path, base: str, user_path: str | None) -> str | None:
    """The commit ``base`` names *now*: in the user's repository for a local project (fetched into
    ours when we lack it), else in our clone. None when there is no such branch or commit."""
    if not git.valid_ref_name(base) and not git.HEX_RE.match(base):
        raise _invalid("base", f"{base!r} is not a valid branch name or commit")
    if user_path is None:
        return await git.rev(base, git_dir=repo)
    user = Path(user_path)
    if not user.exists():
        raise BadRequest(f"the project's repository {user} no longer exists")
    found = await git.run(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{base}^{{commit}}"],
                          cwd=user, check=False)
    commit = found.text if found.code == 0 else ""
    if not git.HEX_RE.match(commit):
        return None
    if await git.rev(commit, git_dir=repo) is None:
        await git.run(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", str(user), commit],
                      git_dir=repo)
    return commit


async def remove(db: Database, project: dict[str, Any]) -> None:
    """Forget the project and delete the service's copy (the user's repository is not touched)."""
    spaces = rec.of_project(db, project["id"])
    rec.delete_project(db, project["id"])
    for ws in spaces:
        await asyncio.to_thread(shutil.rmtree, ws["path"], True)
    await asyncio.to_thread(shutil.rmtree, project["repo"], True)
