"""The host user a run's processes become, and handing a workspace over to that user.

Why: when the service runs as root, anything it starts is root unless it changes user before
exec — and a user namespace made by root maps its "unprivileged" uid to host root (so a
sandbox could write ``/proc/sys`` and own the host). Runs therefore drop to a named OS user
first. The switch is done by ``setpriv`` (util-linux) at the end of an exec chain, never by a
``preexec_fn`` (not safe with threads), so earlier links of the chain (joining a cgroup,
staging mounts) still run as root and the program itself never does.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from agent_manager.errors import ExecutionError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class HostUser:
    """A resolved OS user: numeric ids plus the supplementary groups it would log in with."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def resolve(cls, name: str) -> HostUser:
        """Look ``name`` up in the user database (a plain number is taken as a uid)."""
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except (KeyError, ValueError) as exc:
            raise ExecutionError(f"OS user {name!r} does not exist on this host; create it or change the "
                                 "setting that names it") from exc
        if entry.pw_uid == 0:
            raise ExecutionError(f"OS user {name!r} is root; runs must drop to an unprivileged user")
        try:
            groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != 0)
        except OSError:
            groups = (entry.pw_gid,)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    def is_current(self) -> bool:
        return os.geteuid() == self.uid

    def group_name(self) -> str:
        with contextlib.suppress(KeyError):
            return grp.getgrgid(self.gid).gr_name
        return str(self.gid)


def setpriv_path() -> str:
    found = shutil.which("setpriv", path=SYSTEM_PATH)
    if found is None:
        raise ExecutionError("setpriv (util-linux) is needed to drop privileges before a run: "
                             "apt-get install util-linux")
    return found


def drop_to(user: HostUser, *, no_new_privs: bool) -> list[str]:
    """The argv prefix that execs the rest of the command as ``user`` (uid, gid and groups;
    capabilities go with the uid change). ``[]`` when we already are that user; an error when
    we are someone else and cannot switch."""
    if user.is_current():
        return []
    if os.geteuid() != 0:
        raise ExecutionError(f"cannot run as OS user {user.name!r}: the service is not root")
    prefix = [setpriv_path(), f"--reuid={user.uid}", f"--regid={user.gid}"]
    prefix.append("--groups=" + ",".join(map(str, user.groups)) if user.groups else "--clear-groups")
    if no_new_privs:  # no sudo/su/setuid helpers back to root
        prefix.append("--no-new-privs")
    return [*prefix, "--"]


def hand_over(path: Path, user: HostUser) -> None:
    """Make ``path`` and everything below it owned by ``user`` (only when we are root).

    The tree may hold whatever an earlier run of an untrusted user left, symlinks swapped in
    mid-walk included: the walk uses directory fds and never follows a symlink, so a chown
    can never land outside ``path``.
    """
    if os.geteuid() != 0 or user.is_current():
        return
    path.mkdir(parents=True, exist_ok=True)
    top = os.lstat(path)
    if top.st_uid != user.uid or top.st_gid != user.gid:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if st.st_uid != user.uid or st.st_gid != user.gid:
                    os.chown(name, user.uid, user.gid, dir_fd=dirfd, follow_symlinks=False)


def write_files(workspace: Path, files: dict[str, bytes], user: HostUser | None) -> None:
    """Write a run's input files into its workspace without ever following a symlink.

    The workspace may be shared with earlier runs of less trusted users, who could have left
    ``input.txt -> /etc/...``; every component is opened with ``O_NOFOLLOW`` below a directory
    fd, so a write as root can never land outside the workspace. Files end up owned by ``user``.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or any(p in ("..", ".", "") for p in parts):
            raise ExecutionError(f"input file path {rel!r} must stay inside the workspace")
        dirfd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=dirfd)
                    if user is not None and os.geteuid() == 0:
                        os.chown(part, user.uid, user.gid, dir_fd=dirfd, follow_symlinks=False)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
                os.close(dirfd)
                dirfd = nxt
            # No O_TRUNC before the checks: a hard link planted there may name a file outside the
            # workspace, and O_NONBLOCK makes a planted FIFO an error instead of a hang.
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                         dir_fd=dirfd)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
                    raise ExecutionError(f"input file path {rel!r} is taken by something other than a plain file")
                os.ftruncate(fd, 0)
                if user is not None and os.geteuid() == 0:
                    os.fchown(fd, user.uid, user.gid)
                with os.fdopen(os.dup(fd), "wb") as fh:
                    fh.write(data)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR):  # symlink, FIFO, dir
                raise ExecutionError(f"input file path {rel!r} is taken by something other than a plain file") from exc
            raise ExecutionError(f"cannot write input file {rel!r} into the workspace: {exc.strerror}") from exc
        finally:
            os.close(dirfd)


def prepare_workspace(workspace: Path, files: dict[str, bytes], user: HostUser | None, own: bool = True) -> None:
    """Before a host run (local or sandboxed) starts: write its input files, then hand the tree to
    the run's user so it can write there — only a workspace of the service's own (``own``, from
    ``ExecSpec.hand_over``); a directory the admin chose keeps its owners."""
    write_files(workspace, files, user)
    if user is not None and own:
        hand_over(workspace, user)
