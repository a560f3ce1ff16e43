"""Where runs work: one namespaced directory per agent and per orchestration, and who owns it.

Why namespaces (``agents/<agent id>``, ``orchestrations/<orchestration id>``): a directory named
after an agent could collide with anything else under the same root — an agent called
``orchestrations`` used to work inside every orchestration's files, and an agent deleted and
re-created under the same name inherited its predecessor's. Ids never collide.

Why ownership matters: a non-admin user's local run runs as ``run_as_user`` (see
``executors.routing``), so its workspace must be reachable by that user (every directory above
it searchable) and owned by it, while the data directory stays closed to it (0700).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_manager.settings import Settings

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def agent_workspace(settings: Settings, agent: dict[str, Any]) -> Path:
    """The agent's ``working_dir``, else its own default workspace."""
    if agent.get("working_dir"):
        return Path(agent["working_dir"])
    return settings.workspaces / "agents" / str(agent["id"])


def service_owned(path: Path, settings: Settings) -> bool:
    """Whether ``path`` is one of the service's own directories (under the data directory or
    ``workspaces_dir``), which may be handed over to the OS user a run becomes. Anything else
    (an agent's ``working_dir``) belongs to whoever the admin chose and keeps its owners."""
    target = Path(os.path.abspath(path))
    return any(target.is_relative_to(os.path.abspath(root)) for root in (settings.home, settings.workspaces))


def orchestration_workspace(settings: Settings, orch_id: str) -> Path:
    return settings.workspaces / "orchestrations" / orch_id


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def lookup_user(name: str) -> OsUser | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    try:
        groups = frozenset(os.getgrouplist(name, entry.pw_gid))
    except OSError:
        groups = frozenset({entry.pw_gid})
    return OsUser(name, entry.pw_uid, entry.pw_gid, groups)


def _searchable(info: os.stat_result, user: OsUser) -> bool:
    mode = info.st_mode
    if info.st_uid == user.uid:
        return bool(mode & stat.S_IXUSR)
    if info.st_gid in user.groups:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def reach_problem(path: Path, user: OsUser) -> str | None:
    """None when ``user`` can walk from / down to ``path`` (or to the deepest part of it that
    exists yet); otherwise which directory stops it."""
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    for directory in [existing, *existing.parents]:
        try:
            info = directory.stat()
        except OSError as exc:
            return f"{directory} cannot be examined ({exc.strerror})"
        if stat.S_ISDIR(info.st_mode) and not _searchable(info, user):
            return f"{directory} is closed to the OS user {user.name!r}"
    return None


def hand_over(workspace: Path, user: OsUser, settings: Settings) -> None:
    """Create the workspace and give it to ``user`` — only our own default workspaces, whose
    parents only the service can write; a ``working_dir`` the admin chose is left as it is."""
    root = settings.workspaces
    workspace.mkdir(parents=True, exist_ok=True)
    if not Path(os.path.abspath(workspace)).is_relative_to(os.path.abspath(root)):
        return
    info = os.lstat(workspace)
    if not stat.S_ISDIR(info.st_mode):
        return
    if info.st_uid != user.uid or info.st_gid != user.gid:
        os.chown(workspace, user.uid, user.gid, follow_symlinks=False)
    os.chmod(workspace, 0o700)


@contextlib.contextmanager
def open_dir(root: str, parts: list[str], create: bool = False) -> Iterator[int]:
    """An fd of ``root/parts``, walked one component at a time without following symlinks
    (optionally creating missing directories), so a symlink swapped in meanwhile is refused."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for name in parts:
            try:
                nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def write_beneath(root: Path, rel: str, data: bytes) -> None:
    """Write ``data`` to ``root/rel`` without ever following a symlink (no check-then-use race);
    the new file belongs to whoever owns the workspace (its run-as user when we are root)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise PermissionError(f"{rel!r} is not a path inside the workspace")
    owner = os.lstat(root)
    as_root = os.geteuid() == 0 and owner.st_uid != 0
    with open_dir(str(root), parts[:-1], create=True) as parent:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                     dir_fd=parent)
        with os.fdopen(fd, "wb") as fh:
            info = os.fstat(fd)
            # A hard link planted by a run could point at a file outside the workspace.
            if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
                raise PermissionError(f"{rel!r} is not a plain file of the workspace")
            os.ftruncate(fd, 0)
            if as_root:
                os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
            fh.write(data)
        if as_root:
            _chown_dirs(root, parts[:-1], owner.st_uid, owner.st_gid)


def _chown_dirs(root: Path, parts: list[str], uid: int, gid: int) -> None:
    for depth in range(1, len(parts) + 1):
        with open_dir(str(root), parts[:depth]) as fd:
            info = os.fstat(fd)
            if info.st_uid != uid:
                os.fchown(fd, uid, gid)


def run_as(settings: Settings, executors: Mapping[str, object], workspace: Path, *, is_root: bool
           ) -> tuple[OsUser | None, str]:
    """(the OS user a non-admin local run switches to, None + why that is impossible)."""
    name = settings.run_as_user
    if not is_root:
        return None, "the service does not run as root, so it cannot switch to another OS user"
    user = lookup_user(name)
    if user is None:
        return None, (f"the run_as_user {name!r} does not exist on this host (create it: "
                      f"useradd --system --no-create-home {name})")
    home_owner = settings.home.stat().st_uid if settings.home.exists() else 0
    if user.uid in (0, os.geteuid(), home_owner):
        return None, f"the run_as_user {name!r} is the service's own user or owns the data directory"
    # A process of an isolating backend's host user (the sandbox's) can read the environment
    # of (and ptrace) every run it isolates, because their user namespaces belong to it: the
    # two must differ.
    for backend, executor in executors.items():
        host_user = getattr(executor, "host_user_name", lambda: None)()
        other = lookup_user(host_user) if host_user else None
        if other is not None and other.uid == user.uid:
            return None, (f"the run_as_user {name!r} is also the {backend} backend's host user; give "
                          "non-admin local runs a dedicated user")
    problem = reach_problem(workspace, user)
    if problem:
        return None, (f"the workspace {workspace} is out of reach of {name!r} ({problem}; set "
                      "workspaces_dir outside the data directory)")
    return user, ""
