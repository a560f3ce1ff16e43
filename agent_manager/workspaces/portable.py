"""The portable form of a workspace: a bundle in, a binary patch out (for remote backends).

A remote backend (Daytona) uploads the bundle, runs ``SETUP`` before the agent and ``COLLECT``
after it, and downloads what ``COLLECT`` wrote; it needs to know nothing about git. ``COLLECT``
uses its own copy of the repository (``STATE``), never the ``.git`` the agent could have deleted,
rewritten or filled with hooks, and diffs *everything* in the work tree against the base:
commits, uncommitted edits, binary files, deletions and renames (``--binary -M``).
"""

from __future__ import annotations

from pathlib import Path

from agent_manager.workspaces import git

# sh -c SETUP am BUNDLE WORKSPACE STATE COMMIT BRANCH
SETUP = r"""set -e
B=$1 W=$2 S=$3 C=$4 BR=$5
command -v git >/dev/null 2>&1 || { echo "git is not in this sandbox image: projects need git" >&2; exit 127; }
G="git -c core.hooksPath=/dev/null -c advice.detachedHead=false"
rm -rf "$S" && mkdir -p "$S"
$G clone -q --bare "$B" "$S/repo" >/dev/null
$G clone -q --no-checkout "$B" "$W" >/dev/null
cd "$W"
$G checkout -q -B "$BR" "$C"
git config user.name "Agent Manager" && git config user.email agent-manager@localhost
"""

# sh -c COLLECT am BUNDLE WORKSPACE STATE OUT COMMIT BRANCH
COLLECT = r"""set -e
B=$1 W=$2 S=$3 OUT=$4 C=$5 BR=$6
mkdir -p "$W"
export GIT_DIR="$S/repo" GIT_WORK_TREE="$W" GIT_INDEX_FILE="$S/index"
G="git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.autocrlf=false"
$G read-tree "$C"
$G add -A
$G diff --cached --binary --full-index -M --no-ext-diff --no-textconv "$C" > "$OUT"
"""


async def bundle(repo: Path, branch: str, target: Path) -> None:
    """A bundle of the branch (its whole history: the agent may want ``git log``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    await git.run(["bundle", "create", "--quiet", str(target), f"refs/heads/{branch}"], git_dir=repo)


async def apply(repo: Path, worktree: Path, index: Path, patch: Path) -> None:
    """Apply a patch from a remote sandbox to the worktree (and the private index).

    ``git apply`` refuses paths that climb out, touch ``.git`` or go through a symlink, so a
    hostile patch cannot write outside the worktree."""
    if patch.stat().st_size == 0:
        return
    await git.run(["update-index", "-q", "--refresh"], git_dir=repo, work_tree=worktree, index=index, cwd=worktree,
                  check=False)
    await git.run(["apply", "--index", "--binary", "--whitespace=nowarn", str(patch)], git_dir=repo,
                  work_tree=worktree, index=index, cwd=worktree)
