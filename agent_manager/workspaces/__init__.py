"""Projects and per-run git workspaces: the only code that runs git (DESIGN 3.7).

``manager.Workspaces`` is what the rest of the service uses; ``git`` is the hardened runner,
``projects`` the repositories, ``workspace`` one worktree's lifecycle, ``review`` diff and
merge, ``portable`` the bundle-in / patch-out form remote backends carry.
"""

from agent_manager.workspaces.manager import Base, Workspaces, access_for

__all__ = ["Base", "Workspaces", "access_for"]
