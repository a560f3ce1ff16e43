"""Git workspaces for an orchestration on a project (DESIGN 3.7).

Every step gets its own branch ``am/<orchestration>/steps/<step>``, made from the
orchestration's base plus the merged branches of the step's dependencies, so a step sees
exactly its upstream's changes and parallel steps never see each other's. The orchestration's
own workspace (``am/<orchestration>/result``) holds the base, and at the end the merge of the
steps nothing else built on: that is what gets reviewed and merged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_manager.errors import AgentManagerError
from agent_manager.orchestration.plan import Plan, Step
from agent_manager.store import Database
from agent_manager.workdirs import write_beneath
from agent_manager.workspaces import Base, Workspaces
from agent_manager.workspaces import records as rec


class StepBranches:
    def __init__(self, db: Database, workspaces: Workspaces, orch_ws_id: str) -> None:
        self.db, self.workspaces, self.orch_ws_id = db, workspaces, orch_ws_id

    def _base(self) -> tuple[dict[str, Any], Base]:
        ows = rec.workspace(self.db, self.orch_ws_id)
        return ows, Base(rec.project(self.db, ows["project_id"]), ows["base"], ows["base_commit"])

    def step_workspace(self, orch_id: str, step_id: str) -> dict[str, Any] | None:
        return rec.find(self.db, "step", f"{orch_id}:{step_id}")

    async def prepare(self, orch_id: str, step: Step, owner: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """The step's fresh workspace, or (None, why) when its dependencies' changes conflict."""
        _, base = self._base()
        deps = [(dep, ws) for dep in step.depends_on if (ws := self.step_workspace(orch_id, dep)) is not None]
        try:
            return await self.workspaces.create_from(base, "step", f"{orch_id}:{step.id}", owner, deps), None
        except AgentManagerError as exc:
            return None, f"cannot prepare the workspace: {exc.message}"

    async def write(self, ws: dict[str, Any], rel: str, content: str) -> None:
        """A ``write_file`` step: the file is written into the step's worktree and committed."""
        root = Path(ws["path"]).resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or target == root or ".git" in Path(rel).parts:
            raise OSError(f"path {rel!r} escapes the workspace")
        write_beneath(root, str(target.relative_to(root)), content.encode())  # never through a symlink
        await self.workspaces.settle(ws["id"], f"Write {rel}", "direct")  # written by the service itself

    async def result(self, orch_id: str, plan: Plan, status: dict[str, str]) -> dict[str, Any]:
        """Merge the succeeded steps that no succeeded step built on into the result branch."""
        children: dict[str, list[str]] = {s.id: [] for s in plan.steps}
        for s in plan.steps:
            for dep in s.depends_on:
                children[dep].append(s.id)
        frontier = [s.id for s in plan.steps if status.get(s.id) == "succeeded"
                    and not any(status.get(c) == "succeeded" for c in children[s.id])]
        merge_in = [(sid, ws) for sid in frontier if (ws := self.step_workspace(orch_id, sid)) is not None]
        return await self.workspaces.rebuild(self.orch_ws_id, merge_in)
