"""Read-only access to the files a plan wrote in its orchestration workspace.

Why a module of its own: the orchestration page must reach what a plan produced (the
``write_file`` steps' files, whatever its agents wrote) without pretending the workspace is
an agent's working directory. The same confinement as the file browser applies — paths are
split and checked by ``files.split_path``/``files.resolve`` and opened one directory at a time
without following symlinks (``files.walk``) — and nothing here writes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from agent_manager.errors import Forbidden
from agent_manager.web.routers import files

LIST_CAP = 500
DEPTH_CAP = 8


def read(workspace: Path, path: str, raw: bool, home: Path) -> Any:
    parts = files.split_path(path)
    if not parts:
        return {"type": "list", "files": listing(workspace), "cap": LIST_CAP}
    real_root, resolved = files.resolve(workspace, parts, home)
    rel = "/".join(resolved)
    if not resolved:
        raise Forbidden("path: names the workspace itself, not a file")
    try:
        with files.walk(real_root, resolved[:-1]) as parent:
            data, _ = files.read_plain(parent, resolved[-1], rel, home)
    except OSError as exc:
        raise files.errno_to_error(exc, rel) from exc
    if raw:
        return files.download(data, resolved[-1])
    content, encoding = files.as_text(data)
    return {"type": "file", "path": rel, "size": len(data), "encoding": encoding, "content": content}


def listing(workspace: Path) -> list[dict[str, Any]]:
    """Regular files below the workspace (symlinks are listed as such, never followed), newest first."""
    out: list[dict[str, Any]] = []
    if not workspace.is_dir():
        return out
    root = str(workspace)
    for here, dirs, names in os.walk(root, followlinks=False):
        depth = os.path.relpath(here, root).count(os.sep)
        if depth >= DEPTH_CAP:
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".git")]
        for name in names:
            full = os.path.join(here, name)
            try:
                info = os.lstat(full)
            except OSError:
                continue
            kind = "file" if stat.S_ISREG(info.st_mode) else "symlink" if stat.S_ISLNK(info.st_mode) else "other"
            out.append({"path": os.path.relpath(full, root).replace(os.sep, "/"), "type": kind,
                        "size": info.st_size, "modified": files.stamp(info.st_mtime)})
            if len(out) >= LIST_CAP:
                break
        if len(out) >= LIST_CAP:
            break
    out.sort(key=lambda f: f["path"])
    return out
