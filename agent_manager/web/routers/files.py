"""/api/files: browse, read, write, rename and delete files inside an agent's working directory, and
nowhere else.

Roots: the agent's ``working_dir``, else its default workspace ``<workspaces>/agents/<agent id>``.
Why two checks: ``realpath`` + ``commonpath`` decides whether the *name* stays inside the
root (symlinks included), and the open then walks the resolved path one component at a time
with directory fds and ``O_NOFOLLOW``, so a symlink swapped in between the check and the open
(TOCTOU) fails with ELOOP instead of being followed. ``..``, absolute paths, backslashes and
NUL bytes are refused before any of that. File content is only ever sent as JSON or as
``application/octet-stream`` (with ``nosniff``), so a workspace file can never run as a page of
this origin. Everyone signed in may read; writing needs the admin or a trusted user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from agent_manager.errors import (
    AgentManagerError,
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    TooLarge,
)
from agent_manager.service import Service
from agent_manager.store import agents as agent_store
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, require_trusted, service
from agent_manager.workdirs import agent_workspace
from agent_manager.workdirs import open_dir as walk

router = APIRouter(prefix="/api/files", tags=["files"])
READ_CAP = 1_048_576
WRITE_CAP = 8 * 1_048_576
LIST_CAP = 5000


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def split_path(path: str) -> list[str]:
    """The relative path's components; anything that could climb out is a 400."""
    if "\x00" in path:
        raise BadRequest("path: must not contain NUL bytes", [{"field": "path", "message": "NUL byte"}])
    if "\\" in path:
        raise BadRequest("path: use '/' as the separator (backslashes are refused)",
                         [{"field": "path", "message": "backslash"}])
    if path.startswith("/") or path.startswith("~"):
        raise BadRequest("path: must be relative to the agent's working directory",
                         [{"field": "path", "message": "absolute path"}])
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadRequest("path: '..' is not allowed", [{"field": "path", "message": "parent reference"}])
    if any(len(p.encode()) > 255 for p in parts):
        raise BadRequest("path: a component is longer than 255 bytes", [{"field": "path", "message": "too long"}])
    return parts


def agent_root(svc: Service, agent: dict[str, Any]) -> tuple[Path, bool]:
    """(root, is_default_workspace)."""
    return agent_workspace(svc.settings, agent), not agent.get("working_dir")


def errno_to_error(exc: OSError, rel: str) -> AgentManagerError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{rel or '/'}: no such file or directory")
    if exc.errno in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.EXDEV):
        return Forbidden(f"{rel or '/'}: not allowed (a symbolic link or a permission stops it)")
    if exc.errno == errno.EISDIR:
        return Conflict(f"{rel}: is a directory")
    if exc.errno == errno.ENAMETOOLONG:
        return BadRequest(f"{rel}: name too long")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("the disk holding the working directory is full")
    if exc.errno == errno.EROFS:
        return Forbidden(f"{rel}: the file system is read-only")
    return AgentManagerError(f"{rel}: {exc.strerror or exc}")


def resolve(root: Path, parts: list[str], home: Path) -> tuple[str, list[str]]:
    """(real root, components of the resolved target below it), or Forbidden if it leaves the root."""
    real_root = os.path.realpath(root)
    real_home = os.path.realpath(home)
    if real_root == "/" or os.path.commonpath([real_root, real_home]) == real_root:
        raise Forbidden("this agent's working directory contains the service's data directory (or is /); "
                        "the file browser does not serve it")
    target = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, target]) != real_root:
        raise Forbidden("path: leads outside the agent's working directory")
    rel = os.path.relpath(target, real_root)
    return real_root, ([] if rel == "." else rel.split(os.sep))


def _kind(mode: int) -> Literal["file", "dir", "symlink", "other"]:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def _listing(fd: int) -> tuple[list[dict[str, Any]], bool]:
    entries: list[dict[str, Any]] = []
    truncated = False
    with os.scandir(os.dup(fd)) as it:  # scandir closes the fd it was given
        for entry in it:
            if len(entries) >= LIST_CAP:
                truncated = True
                break
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append({"name": entry.name, "type": _kind(info.st_mode), "size": info.st_size,
                            "modified": stamp(info.st_mtime)})
    entries.sort(key=lambda e: (e["type"] != "dir", e["name"]))
    return entries, truncated


@router.get("", response_model=api.DirListing | api.FileContent,
            responses={**api.DOWNLOAD, **api.errors(400, 403, 404, 409, 413)})
async def read(request: Request, agent: str = Query(..., min_length=1, max_length=256),
               path: str = Query("", max_length=4096), raw: bool = False,
               svc: Service = Depends(service)) -> Any:
    """List a directory or read a file (JSON; ``raw=true`` sends a file's bytes as a download)."""
    found = agent_store.get(svc.database, agent)
    parts = split_path(path)
    root, default = agent_root(svc, found)
    if not parts and default and not root.exists():
        return {"type": "dir", "agent": found["name"], "root": str(root), "path": "", "entries": [],
                "truncated": False}
    real_root, resolved = resolve(root, parts, svc.settings.home)
    rel = "/".join(resolved)
    try:
        with walk(real_root, resolved[:-1]) as parent:
            if not resolved:
                entries, truncated = _listing(parent)
                return {"type": "dir", "agent": found["name"], "root": str(root), "path": "", "entries": entries,
                        "truncated": truncated}
            name = resolved[-1]
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                with walk(real_root, resolved) as here:
                    entries, truncated = _listing(here)
                return {"type": "dir", "agent": found["name"], "root": str(root), "path": rel, "entries": entries,
                        "truncated": truncated}
            if not stat.S_ISREG(info.st_mode):
                raise Forbidden(f"{rel}: not a regular file")
            data, info = read_plain(parent, name, rel, svc.settings.home)
    except OSError as exc:
        raise errno_to_error(exc, rel) from exc
    if raw:
        return download(data, name)
    content, encoding = as_text(data)
    return {"type": "file", "agent": found["name"], "path": rel, "size": len(data),
            "modified": stamp(info.st_mtime), "encoding": encoding, "content": content}


def read_plain(parent: int, name: str, rel: str, home: Path) -> tuple[bytes, os.stat_result]:
    """The first ``READ_CAP`` bytes of ``name`` in the directory ``parent``, and its stat: only
    a regular file (never a symlink followed or a FIFO waited on), and never a hard link to one
    of the service's own files (token, database). Shared by the file browser and a plan's files."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Forbidden(f"{rel}: not a regular file")
        if info.st_nlink > 1 and service_file(info, home):
            raise Forbidden(f"{rel}: a hard link to one of the service's own files")
        if info.st_size > READ_CAP:
            raise TooLarge(f"{rel}: {info.st_size} bytes is more than the {READ_CAP}-byte limit",
                           {"size": info.st_size, "limit": READ_CAP})
        return fh.read(READ_CAP + 1)[:READ_CAP], info


def download(data: bytes, name: str) -> Response:
    """A file's bytes as an attachment the browser never renders (no script of a run runs here)."""
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{_quote(name)}",
        "Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"})


def as_text(data: bytes) -> tuple[str, str]:
    """(content, encoding): UTF-8 text as it is, anything else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"


def service_file(info: os.stat_result, home: Path) -> bool:
    """Whether ``info`` is a file of the data directory (token, database, config) under another name."""
    try:
        with os.scandir(home) as entries:
            for entry in entries:
                found = entry.stat(follow_symlinks=False)
                if (found.st_dev, found.st_ino) == (info.st_dev, info.st_ino):
                    return True
    except OSError:
        return True  # cannot tell: refuse
    return False


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


async def _body(request: Request) -> bytes:
    """The new content: raw bytes, or JSON ``{"content": str, "encoding": "utf-8"|"base64"}``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > WRITE_CAP:
            raise TooLarge(f"the body is more than the {WRITE_CAP}-byte limit", {"limit": WRITE_CAP})
        chunks.append(chunk)
    body = b"".join(chunks)
    if "application/json" not in request.headers.get("content-type", ""):
        return body
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("body: not valid JSON", [{"field": "body", "message": "invalid JSON"}]) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("content"), str) or set(doc) - {"content", "encoding"}:
        raise BadRequest("body: expected {\"content\": string, \"encoding\"?: \"utf-8\"|\"base64\"}",
                         [{"field": "content", "message": "required string"}])
    encoding = doc.get("encoding", "utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(doc["content"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("content: not valid base64", [{"field": "content", "message": "bad base64"}]) from exc
    if encoding != "utf-8":
        raise BadRequest("encoding: must be utf-8 or base64", [{"field": "encoding", "message": "unknown"}])
    return str(doc["content"]).encode("utf-8", "surrogatepass")


WRITE_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": {"type": "object", "additionalProperties": False, "required": ["content"],
                                    "properties": {"content": {"type": "string"},
                                                   "encoding": {"enum": ["utf-8", "base64"]}}}}}}}


@router.put("", response_model=api.FileWritten, openapi_extra=WRITE_BODY, dependencies=[Depends(require_trusted)],
            responses=api.errors(400, 403, 404, 409, 413, 507))
async def write(request: Request, agent: str = Query(..., min_length=1, max_length=256),
                path: str = Query(..., min_length=1, max_length=4096),
                svc: Service = Depends(service)) -> dict[str, Any]:
    """Create or replace a file (atomically), creating missing parent directories."""
    found = agent_store.get(svc.database, agent)
    parts = split_path(path)
    if not parts:
        raise BadRequest("path: name a file", [{"field": "path", "message": "empty"}])
    data = await _body(request)
    root, default = agent_root(svc, found)
    if default:
        root.mkdir(parents=True, exist_ok=True)
    elif not root.is_dir():
        raise NotFound(f"the working directory {root} does not exist")
    real_root, resolved = resolve(root, parts, svc.settings.home)
    rel = "/".join(resolved)
    if not resolved:
        raise Conflict("path: is the working directory itself")
    try:
        with walk(real_root, resolved[:-1], create=True) as parent:
            name = resolved[-1]
            mode = 0o644
            with contextlib.suppress(FileNotFoundError):
                current = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(current.st_mode):
                    raise Conflict(f"{rel}: is a directory")
                if not stat.S_ISREG(current.st_mode):
                    raise Forbidden(f"{rel}: not a regular file")
                mode = stat.S_IMODE(current.st_mode)
            tmp = f".{name[:200]}.am-{secrets.token_hex(6)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    owner = os.fstat(parent)
                    if os.geteuid() == 0 and owner.st_uid != 0:  # a run-as user's workspace stays theirs
                        os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
                    fh.write(data)
                os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent)
                raise
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        raise errno_to_error(exc, rel) from exc
    audit(request, "file.write", f"{found['name']}:{rel}", {"size": len(data)})
    return {"type": "file", "agent": found["name"], "path": rel, "size": info.st_size,
            "modified": stamp(info.st_mtime)}


def _entry(svc: Service, agent: str, path: str) -> tuple[dict[str, Any], str, list[str], str, str]:
    """(agent, real root, parent components, last name, relative path) for an entry to change.
    Only the parent is resolved: the entry itself is acted on without following it, so a symlink
    is renamed or removed, never what it points to."""
    found = agent_store.get(svc.database, agent)
    parts = split_path(path)
    if not parts:
        raise BadRequest("path: name a file or directory", [{"field": "path", "message": "empty"}])
    root, _ = agent_root(svc, found)
    if not root.is_dir():
        raise NotFound(f"the working directory {root} does not exist")
    real_root, parent = resolve(root, parts[:-1], svc.settings.home)
    return found, real_root, parent, parts[-1], "/".join([*parent, parts[-1]])


@router.delete("", status_code=204, dependencies=[Depends(require_trusted)],
               responses=api.errors(400, 403, 404, 409, 507))
async def remove(request: Request, agent: str = Query(..., min_length=1, max_length=256),
                 path: str = Query(..., min_length=1, max_length=4096), svc: Service = Depends(service)) -> Response:
    """Delete a file, a symlink (not its target) or an empty directory."""
    found, real_root, parent, name, rel = _entry(svc, agent, path)
    try:
        with walk(real_root, parent) as fd:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            raise Conflict(f"{rel}: the directory is not empty") from exc
        raise errno_to_error(exc, rel) from exc
    audit(request, "file.delete", f"{found['name']}:{rel}")
    return Response(status_code=204)


@router.post("/move", dependencies=[Depends(require_trusted)], response_model=api.Moved,
             responses=api.errors(400, 403, 404, 409, 507))
async def move(request: Request, agent: str = Query(..., min_length=1, max_length=256),
               path: str = Query(..., min_length=1, max_length=4096),
               to: str = Query(..., min_length=1, max_length=4096), svc: Service = Depends(service)) -> dict[str, Any]:
    """Rename or move an entry inside the working directory; never replaces an existing one (409)."""
    found, real_root, parent, name, rel = _entry(svc, agent, path)
    _, dst_root, dst_parent, dst_name, dst_rel = _entry(svc, agent, to)
    try:
        with walk(real_root, parent) as src_fd, walk(dst_root, dst_parent, create=True) as dst_fd:
            os.stat(name, dir_fd=src_fd, follow_symlinks=False)  # 404 for a missing source
            with contextlib.suppress(FileNotFoundError):
                os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
                raise Conflict(f"{dst_rel}: already exists")
            os.rename(name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise BadRequest(f"{rel}: cannot be moved into itself", [{"field": "to", "message": "inside"}]) from exc
        raise errno_to_error(exc, rel) from exc
    audit(request, "file.move", f"{found['name']}:{rel}", {"to": dst_rel})
    return {"agent": found["name"], "path": dst_rel, "from": rel}
