"""The service's entry point to projects and workspaces (built once by the composition root).

Why the locks: every git operation that moves a branch or a worktree of one project runs under
that project's lock, so two merges, a merge and a settle, or two step worktrees being made
never interleave; ``busy`` marks workspaces a run is using, which merge and discard refuse.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent_manager import plugins
from agent_manager.errors import Conflict, ValidationFailed
from agent_manager.executors.base import ExecSpec
from agent_manager.settings import Settings
from agent_manager.store import Database
from agent_manager.workspaces import git, portable, projects, review
from agent_manager.workspaces import records as rec
from agent_manager.workspaces import workspace as wsp

log = logging.getLogger("agent_manager.workspaces")


access_for = plugins.workspace_access  # how a backend reaches a workspace, by its capabilities


@dataclass
class Base:
    project: dict[str, Any]
    base: str
    commit: str


class Workspaces:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.busy: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, project_id: str) -> asyncio.Lock:
        return self._locks.setdefault(project_id, asyncio.Lock())

    def _paths(self, ws: dict[str, Any]) -> wsp.Paths:
        return wsp.Paths.of(ws, rec.project(self.db, ws["project_id"]))

    # -- projects -----------------------------------------------------------------------------

    async def register(self, who: dict[str, Any], name: str, *, path: str | None, git_url: str | None,
                       base: str | None) -> dict[str, Any]:
        return await projects.register(self.db, self.settings, who, name, path=path, git_url=git_url, base=base)

    async def remove_project(self, ref: str) -> None:
        project = rec.project(self.db, ref)
        if any(ws["project_id"] == project["id"] for ws in map(lambda i: rec.workspace(self.db, i), self.busy)):
            raise Conflict(f"a run is still working in project {project['name']!r}")
        async with self.lock(project["id"]):
            await projects.remove(self.db, project)

    # -- creating ------------------------------------------------------------------------------

    async def check_base(self, project_ref: str, base: str | None) -> Base:
        """Resolve ``base`` now, so a missing ref is a 422 at request time, never a failed run."""
        project = rec.project(self.db, project_ref)
        name = base or project["default_base"]
        async with self.lock(project["id"]):
            commit = await projects.resolve_in(Path(project["repo"]), name, project["path"])
        if commit is None:
            raise ValidationFailed(f"base: {name!r} is not a branch or commit of project {project['name']!r}",
                                   [{"field": "base", "message": "not found"}])
        return Base(project, name, commit)

    def record(self, base: Base, kind: str, owner_ref: str, owner: str | None) -> dict[str, Any]:
        """The workspace row (the worktree itself is made when a run first needs it)."""
        return wsp.new_record(self.db, self.settings.home, base.project, base.base, base.commit, kind,
                              owner_ref, owner)

    async def create_from(self, base: Base, kind: str, owner_ref: str, owner: str | None,
                          merge_in: list[tuple[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
        """A workspace (with its worktree) branched from ``base`` with other workspaces' branches
        merged in: a plan step sees exactly its dependencies' changes. A conflict is a Conflict
        naming the steps merged and the paths. An earlier workspace of the same owner (a retry,
        a resume) is discarded first."""
        existing = rec.find(self.db, kind, owner_ref)
        if existing is not None:
            await self.discard(existing["id"], force=True)
            rec.forget(self.db, existing["id"])
        ws = self.record(base, kind, owner_ref, owner)
        p = self._paths(ws)
        async with self.lock(base.project["id"]):
            try:
                head = await self._merged_head(p.repo, base.commit, merge_in or [])
                if head != base.commit:
                    await git.run(["update-ref", f"refs/heads/{p.branch}", head], git_dir=p.repo)
                    ws = rec.update(self.db, ws["id"], base_commit=head, head_commit=head)
                await wsp.ensure(p, head)
            except BaseException:
                rec.forget(self.db, ws["id"])
                raise
        return ws

    async def rebuild(self, ws_id: str, merge_in: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Point a workspace's branch at its base plus ``merge_in`` (an orchestration's result)."""
        ws = rec.workspace(self.db, ws_id)
        p = self._paths(ws)
        async with self.lock(ws["project_id"]):
            head = await self._merged_head(p.repo, ws["base_commit"], merge_in)
            await git.run(["update-ref", f"refs/heads/{p.branch}", head], git_dir=p.repo)
            stats = await review.diff_stats(p.repo, ws["base_commit"], head)
        return rec.update(self.db, ws_id, head_commit=head, **stats)

    @staticmethod
    async def _merged_head(repo: Path, start: str, merge_in: list[tuple[str, dict[str, Any]]]) -> str:
        head, merged = start, []
        for label, other in merge_in:
            if await git.is_ancestor(other["head_commit"], head, git_dir=repo):
                merged.append(label)
                continue
            if await git.is_ancestor(head, other["head_commit"], git_dir=repo):
                head = other["head_commit"]  # a fast-forward: nothing to combine
            else:
                try:
                    head = await review.merge_commit(repo, head, other["head_commit"], "merge",
                                                     f"Merge {other['branch']} ({label})")
                except Conflict as exc:
                    paths = [d["field"] for d in exc.details or []]
                    raise Conflict(f"the changes of {' and '.join([*merged, label])} conflict in: {', '.join(paths)}",
                                   exc.details) from exc
            merged.append(label)
        return head

    # -- around a run --------------------------------------------------------------------------

    async def prepare(self, ws_id: str, run_id: str, access: wsp.Access, spec: ExecSpec) -> ExecSpec:
        ws = rec.workspace(self.db, ws_id)
        if ws["state"] != "open":
            raise Conflict(f"workspace {ws['branch']} is {ws['state']}")
        if ws_id in self.busy:
            raise Conflict(f"{_who(self.busy[ws_id])} is still working in {ws['branch']}")
        self.busy[ws_id] = run_id
        try:
            p = self._paths(ws)
            async with self.lock(ws["project_id"]):
                await wsp.ensure(p, ws["head_commit"])
                scratch = self.settings.home / "sandbox-git" / ws_id
                carry = self.settings.home / "portable" / ws_id
                spec = wsp.spec_for(access, p, ws, spec, scratch, carry)
                if spec.portable is not None:
                    await portable.bundle(p.repo, p.branch, spec.portable.bundle)
        except BaseException:
            self.busy.pop(ws_id, None)
            raise
        return spec

    async def settle(self, ws_id: str, prompt: str, access: wsp.Access,
                     service_files: dict[str, bytes] | None = None, run_id: str | None = None) -> dict[str, Any]:
        """After a run (whatever its outcome): commit its work and record the statistics."""
        try:
            ws = rec.workspace(self.db, ws_id)
            if ws["state"] != "open":
                return ws
            p = self._paths(ws)
            scratch = self.settings.home / "sandbox-git" / ws_id
            carry = self.settings.home / "portable" / ws_id
            async with self.lock(ws["project_id"]):
                fields = await wsp.settle(p, ws, wsp.commit_message(prompt),
                                          scratch=scratch if access == "private_git" and scratch.is_dir() else None,
                                          changes=carry / "changes.patch" if access == "portable" else None,
                                          service_files=service_files)
            if scratch.is_dir():
                await asyncio.to_thread(shutil.rmtree, scratch, True)
            if access == "portable" and "note" not in fields:
                await asyncio.to_thread(shutil.rmtree, carry, True)
            return rec.update(self.db, ws_id, **fields)
        finally:
            if run_id is None or self.busy.get(ws_id) == run_id:
                self.busy.pop(ws_id, None)

    # -- review --------------------------------------------------------------------------------

    async def diff(self, ws_id: str) -> dict[str, Any]:
        ws = rec.workspace(self.db, ws_id)
        repo = Path(rec.project(self.db, ws["project_id"])["repo"])
        found = await review.files(repo, ws["base_commit"], ws["head_commit"])
        text = await review.patch(repo, ws["base_commit"], ws["head_commit"])
        truncated = len(text) > review.PATCH_LIMIT
        return {"workspace": rec.public(ws), "files": found, "patch": text[: review.PATCH_LIMIT],
                "truncated": truncated}

    async def patch(self, ws_id: str) -> str:
        ws = rec.workspace(self.db, ws_id)
        repo = Path(rec.project(self.db, ws["project_id"])["repo"])
        return await review.patch(repo, ws["base_commit"], ws["head_commit"])

    async def merge(self, ws_id: str, strategy: str, title: str) -> dict[str, Any]:
        ws = rec.workspace(self.db, ws_id)
        project = rec.project(self.db, ws["project_id"])
        async with self.lock(project["id"]):
            ws = rec.workspace(self.db, ws_id)  # again, under the lock: a racing merge may have won
            if ws["state"] != "open":
                raise Conflict(f"workspace {ws['branch']} is already {ws['state']}")
            if ws_id in self.busy:
                raise Conflict(f"{_who(self.busy[ws_id])} is still working in {ws['branch']}")
            if git.HEX_RE.match(ws["base"]):
                raise Conflict(f"the base {ws['base']} is a commit, not a branch: there is nothing to merge into;"
                               " download the patch instead")
            repo = Path(project["repo"])
            user = Path(project["path"]) if project["path"] else None
            old = await projects.resolve_in(repo, ws["base"], project["path"])
            if old is None:
                raise Conflict(f"the base branch {ws['base']!r} no longer exists")
            message = f"{title}\n\nMerged from {ws['branch']} by Agent Manager ({strategy})."
            new = await review.merge_commit(repo, old, ws["head_commit"], strategy, message)
            await review.deliver(user, repo, ws["base"], old, new)
            if user is not None:  # keep the service's copy of the base in step
                await git.run(["update-ref", f"refs/heads/{ws['base']}", new], git_dir=repo, check=False)
            await wsp.remove_worktree(self._paths(ws))
            return rec.update(self.db, ws_id, state="merged", merged_commit=new)

    async def discard(self, ws_id: str, force: bool = False) -> dict[str, Any]:
        ws = rec.workspace(self.db, ws_id)
        async with self.lock(ws["project_id"]):
            ws = rec.workspace(self.db, ws_id)
            if ws_id in self.busy and not force:
                raise Conflict(f"{_who(self.busy[ws_id])} is still working in {ws['branch']}")
            if ws["state"] == "merged" and not force:
                raise Conflict(f"workspace {ws['branch']} is already merged")
            p = self._paths(ws)
            await wsp.remove_worktree(p)
            await git.run(["update-ref", "-d", f"refs/heads/{p.branch}"], git_dir=p.repo, check=False)
            for extra in ("sandbox-git", "portable"):
                await asyncio.to_thread(shutil.rmtree, self.settings.home / extra / ws_id, True)
            state = ws["state"] if ws["state"] == "merged" else "discarded"
            return rec.update(self.db, ws_id, state=state)

    # -- housekeeping --------------------------------------------------------------------------

    async def prune(self) -> int:
        """Discard open workspaces untouched for ``workspace_retention_days`` (0 keeps them)."""
        days = self.settings.workspace_retention_days
        if days <= 0:
            return 0
        cutoff = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rows = self.db.all("SELECT id FROM workspaces WHERE state = 'open' AND updated_at < ?", (cutoff,))
        pruned = 0
        for row in rows:
            if row["id"] in self.busy:
                continue
            try:
                await self.discard(row["id"])
                rec.update(self.db, row["id"], note=f"pruned after {days} days without activity")
                pruned += 1
            except Exception as exc:  # one broken workspace must not stop the others
                log.warning("could not prune workspace %s: %s", row["id"], exc)
        return pruned

    async def recover(self) -> int:
        """Runs the previous process left unfinished: commit what their agents left, so the work
        can be reviewed (the run itself is already recorded as interrupted)."""
        rows = self.db.all("SELECT r.id AS run_id, r.prompt, r.backend, r.workspace_id FROM runs r"
                           " JOIN workspaces w ON w.id = r.workspace_id WHERE r.status = 'interrupted'"
                           " AND w.state = 'open' AND r.finished_at >= w.updated_at")
        done = 0
        for row in rows:
            try:
                await self.settle(row["workspace_id"], row["prompt"], access_for(row["backend"]))
                done += 1
            except Exception as exc:
                log.warning("could not settle workspace %s after a restart: %s", row["workspace_id"], exc)
        return done + await self._recover_terminals()

    async def _recover_terminals(self) -> int:
        """Terminals hold nothing in the database, so after a crash their work is found on disk:
        a private git dir still there (a sandboxed terminal's commits, or a run's whose settle
        failed) and open workspaces made for a terminal (files left in the worktree)."""
        scratch_root = self.settings.home / "sandbox-git"
        leftovers: dict[str, wsp.Access] = (
            {p.name: "private_git" for p in scratch_root.iterdir()} if scratch_root.is_dir() else {})
        for row in self.db.all("SELECT id FROM workspaces WHERE kind = 'terminal' AND state = 'open'"):
            leftovers.setdefault(row["id"], "direct")
        done = 0
        for ws_id, access in leftovers.items():
            ws = rec.find_by_id(self.db, ws_id)
            if ws is None or ws["state"] != "open" or ws_id in self.busy or not Path(ws["path"]).is_dir():
                continue  # (a worktree removed by hand would be committed as every file deleted)
            try:
                before = ws["head_commit"]
                settled = await self.settle(ws_id, "Terminal session interrupted by a restart", access)
                done += settled["head_commit"] != before
            except Exception as exc:
                log.warning("could not settle workspace %s after a restart: %s", ws_id, exc)
        return done


def _who(busy_with: str) -> str:
    """What holds a workspace: a run, or a terminal open on it (``term_…`` ids)."""
    return f"terminal {busy_with}" if busy_with.startswith("term_") else f"run {busy_with}"
