"""The file browser stays inside the agent's working directory (notes C.6)."""

from __future__ import annotations

import base64
import errno
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_manager.service import Service
from agent_manager.web.routers import files

CANARY = "root:x:0:0:canary-outside-the-root"
BACKSLASH = "\\"


@pytest.fixture
async def ws(client: httpx.AsyncClient, tmp_path: Path) -> Path:
    """An agent "w" whose working dir has files, an in-root symlink and links leading out."""
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello a\n")
    (root / "sub" / "b.txt").write_text("hello b\n")
    (root / "bin.dat").write_bytes(bytes(range(256)))
    (tmp_path / "secret.txt").write_text(CANARY)
    (root / "inside").symlink_to("sub")
    (root / "link").symlink_to("/etc")
    (root / "esc").symlink_to("../secret.txt")
    (root / "escdir").symlink_to("..")
    r = await client.post("/api/agents", json={"name": "w", "command": "echo", "working_dir": str(root)})
    assert r.status_code == 201, r.text
    return root


TRAVERSALS = [
    "../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/etc/passwd", "%2fetc%2fpasswd", "a/../../..", "..%5c..%5cetc%5cpasswd", "..\\..\\", "sub\\..\\..",
    "%252e%252e/%252e%252e/etc/passwd", "%252e%252e%252fsecret.txt", "link", "link/passwd", "link/..",
    "link/../secret.txt", "esc", "escdir", "escdir/secret.txt", "inside/../../secret.txt", "sub/..%2f..%2fsecret.txt",
    "a.txt%00.png", "%00", "~root", "~/.ssh", "....//....//etc/passwd", "sub/./../../secret.txt",
    "%c0%ae%c0%ae/secret.txt", ".%2e/secret.txt", "file:///etc/passwd",
]


def _url(raw_path: str, agent: str = "w") -> str:
    """The query is sent exactly as written (already encoded): the server decodes it once."""
    encoded = raw_path.replace(BACKSLASH, "%5C")
    return f"/api/files?agent={agent}&path={encoded}"


@pytest.mark.parametrize("raw", TRAVERSALS)
async def test_traversal_is_refused(client: httpx.AsyncClient, ws: Path, tmp_path: Path, raw: str) -> None:
    before = {p: p.read_bytes() for p in (tmp_path / "secret.txt", Path("/etc/passwd"))}
    r = await client.get(_url(raw))
    assert r.status_code in (400, 403, 404), (raw, r.status_code, r.text)
    assert "root:" not in r.text and "canary" not in r.text
    w = await client.put(_url(raw), content=b"pwned", headers={"Content-Type": "application/octet-stream"})
    assert "root:" not in w.text
    if w.status_code == 200:  # a strange but literal name (e.g. "%2e%2e", "....") is written inside the root
        written = ws / w.json()["path"]
        assert written.read_bytes() == b"pwned" and written.resolve().is_relative_to(ws.resolve())
        assert ".." not in w.json()["path"].split("/")
    else:
        assert w.status_code in (400, 403, 404, 409), (raw, w.status_code, w.text)
    for path, data in before.items():
        assert path.read_bytes() == data
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(ws) and "pwned" in _safe_read(p)]
    assert outside == []


def _safe_read(path: Path) -> str:
    try:
        return path.read_text(errors="replace") if path.is_file() and not path.is_symlink() else ""
    except OSError:
        return ""


async def test_listing_and_reading(client: httpx.AsyncClient, ws: Path) -> None:
    r = await client.get("/api/files", params={"agent": "w"})
    assert r.status_code == 200, r.text
    listing = r.json()
    assert listing["type"] == "dir" and listing["path"] == ""
    kinds = {e["name"]: e["type"] for e in listing["entries"]}
    assert kinds == {"sub": "dir", "a.txt": "file", "bin.dat": "file", "inside": "symlink", "link": "symlink",
                     "esc": "symlink", "escdir": "symlink"}
    assert listing["entries"][0]["name"] == "sub"  # directories first
    a = (await client.get("/api/files", params={"agent": "w", "path": "a.txt"})).json()
    assert a["content"] == "hello a\n" and a["encoding"] == "utf-8" and a["size"] == 8
    sub = (await client.get("/api/files", params={"agent": "w", "path": "sub/"})).json()
    assert [e["name"] for e in sub["entries"]] == ["b.txt"]
    via_link = (await client.get("/api/files", params={"agent": "w", "path": "inside/b.txt"})).json()
    assert via_link["content"] == "hello b\n" and via_link["path"] == "sub/b.txt"
    binary = (await client.get("/api/files", params={"agent": "w", "path": "bin.dat"})).json()
    assert binary["encoding"] == "base64" and base64.b64decode(binary["content"]) == bytes(range(256))
    raw = await client.get("/api/files", params={"agent": "w", "path": "a.txt", "raw": "true"})
    assert raw.content == b"hello a\n"
    assert raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["x-content-type-options"] == "nosniff" and "attachment" in raw.headers["content-disposition"]
    assert (await client.get("/api/files", params={"agent": "w", "path": "nope.txt"})).status_code == 404
    assert (await client.get("/api/files", params={"agent": "nobody"})).status_code == 404


async def test_writing(client: httpx.AsyncClient, ws: Path) -> None:
    r = await client.put("/api/files", params={"agent": "w", "path": "new/deep/c.txt"}, content=b"raw bytes\n")
    assert r.status_code == 200, r.text
    assert (ws / "new" / "deep" / "c.txt").read_bytes() == b"raw bytes\n"
    assert r.json()["size"] == 10
    r = await client.put("/api/files", params={"agent": "w", "path": "a.txt"}, json={"content": "new a ✓"})
    assert r.status_code == 200 and (ws / "a.txt").read_text() == "new a ✓"
    r = await client.put("/api/files", params={"agent": "w", "path": "b64.bin"},
                         json={"content": base64.b64encode(b"\x00\xff").decode(), "encoding": "base64"})
    assert r.status_code == 200 and (ws / "b64.bin").read_bytes() == b"\x00\xff"
    (ws / "mode.sh").write_text("#!/bin/sh\n")
    os.chmod(ws / "mode.sh", 0o755)
    await client.put("/api/files", params={"agent": "w", "path": "mode.sh"}, content=b"#!/bin/sh\necho\n")
    assert os.stat(ws / "mode.sh").st_mode & 0o777 == 0o755  # the mode survives the atomic replace
    assert (await client.put("/api/files", params={"agent": "w", "path": "sub"}, content=b"x")).status_code == 409
    bad = await client.put("/api/files", params={"agent": "w", "path": "x"}, json={"content": 5})
    assert bad.status_code == 400
    bad = await client.put("/api/files", params={"agent": "w", "path": "x"}, content=b"{",
                           headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    assert (await client.put("/api/files", params={"agent": "w", "path": ""}, content=b"x")).status_code in (400, 422)
    assert not [p for p in ws.rglob("*.tmp")]  # no temp files left behind


async def test_size_caps(client: httpx.AsyncClient, ws: Path) -> None:
    (ws / "big.txt").write_bytes(b"x" * (files.READ_CAP + 1))
    r = await client.get("/api/files", params={"agent": "w", "path": "big.txt"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = await client.put("/api/files", params={"agent": "w", "path": "huge"}, content=b"x" * (files.WRITE_CAP + 1))
    assert r.status_code == 413 and not (ws / "huge").exists()


async def test_default_workspace_root(client: httpx.AsyncClient, service: Service) -> None:
    r0 = await client.post("/api/agents", json={"name": "d", "command": "echo"})
    assert r0.status_code == 201
    r = await client.get("/api/files", params={"agent": "d"})
    assert r.status_code == 200 and r.json()["entries"] == []
    r = await client.put("/api/files", params={"agent": "d", "path": "notes.md"}, content=b"# hi\n")
    assert r.status_code == 200
    assert (service.settings.workspaces / "agents" / r0.json()["id"] / "notes.md").read_bytes() == b"# hi\n"


async def test_root_holding_the_data_directory_is_refused(client: httpx.AsyncClient, service: Service) -> None:
    for name, wd in (("slash", "/"), ("parent", str(service.settings.home.parent)),
                     ("home", str(service.settings.home))):
        assert (await client.post("/api/agents", json={"name": name, "command": "echo",
                                                       "working_dir": wd})).status_code == 201
        r = await client.get("/api/files", params={"agent": name, "path": "admin-token" if name == "home" else ""})
        assert r.status_code == 403, (name, r.text)
        assert service.settings.token_path.read_text().strip() not in r.text


async def test_symlink_swapped_in_after_the_check_is_not_followed(client: httpx.AsyncClient, ws: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """TOCTOU: pretend the realpath check ran before ``link`` became a symlink; the fd walk
    with O_NOFOLLOW must still refuse it."""
    monkeypatch.setattr(files.os.path, "realpath", lambda p: os.path.abspath(p))
    for path in ("link/passwd", "esc", "escdir/secret.txt"):
        r = await client.get("/api/files", params={"agent": "w", "path": path})
        assert r.status_code in (403, 404), (path, r.text)
        assert "root:" not in r.text
        w = await client.put("/api/files", params={"agent": "w", "path": path}, content=b"pwned")
        assert w.status_code in (403, 404), (path, w.text)
    assert "pwned" not in (ws.parent / "secret.txt").read_text()


def test_walk_refuses_symlinked_directories(ws: Path) -> None:
    with pytest.raises(OSError) as info, files.walk(str(ws), ["link"]):
        pass
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    with files.walk(str(ws), ["sub"]) as fd:
        assert "b.txt" in os.listdir(fd)


async def test_untrusted_users_may_read_but_not_write(client: httpx.AsyncClient, ws: Path) -> None:
    token = (await client.post("/api/users", json={"name": "u", "trusted": False})).json()["token"]
    user: dict[str, Any] = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/files", params={"agent": "w", "path": "a.txt"}, headers=user)).status_code == 200
    r = await client.put("/api/files", params={"agent": "w", "path": "a.txt"}, content=b"x", headers=user)
    assert r.status_code == 403 and (ws / "a.txt").read_text() == "hello a\n"
    audit = (await client.get("/api/audit", params={"action": "file."})).json()
    assert audit["total"] == 0
    await client.put("/api/files", params={"agent": "w", "path": "a.txt"}, content=b"y")
    assert (await client.get("/api/audit", params={"action": "file."})).json()["items"][0]["target"] == "w:a.txt"


async def test_rename_and_delete_stay_inside_and_never_follow_links(client: httpx.AsyncClient, ws: Path,
                                                                    tmp_path: Path) -> None:
    f = {"agent": "w"}
    moved = await client.post("/api/files/move", params={**f, "path": "a.txt", "to": "sub/new/a2.txt"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["path"] == "sub/new/a2.txt" and (ws / "sub/new/a2.txt").read_text() == "hello a\n"
    assert not (ws / "a.txt").exists()
    # never replaces, never leaves the root, never moves a directory into itself
    assert (await client.post("/api/files/move", params={**f, "path": "sub/b.txt", "to": "sub/new/a2.txt"})
            ).status_code == 409
    for bad in ("../x", "/tmp/x", "link/x", "escdir/x"):
        r = await client.post("/api/files/move", params={**f, "path": "sub/b.txt", "to": bad})
        assert r.status_code in (400, 403), (bad, r.text)
    assert (await client.post("/api/files/move", params={**f, "path": "sub", "to": "sub/new/inner"})).status_code == 400
    assert (ws / "sub/b.txt").exists()
    # deleting a symlink removes the link, not its target
    assert (await client.delete("/api/files", params={**f, "path": "esc"})).status_code == 204
    assert not (ws / "esc").is_symlink() and (tmp_path / "secret.txt").read_text() == CANARY
    for bad in ("escdir/secret.txt", "../secret.txt", "link/passwd", ""):
        r = await client.delete("/api/files", params={**f, "path": bad})
        assert r.status_code in (400, 403, 422), (bad, r.text)
    assert (tmp_path / "secret.txt").exists()
    assert (await client.delete("/api/files", params={**f, "path": "sub"})).status_code == 409  # not empty
    assert (await client.delete("/api/files", params={**f, "path": "nope"})).status_code == 404
    assert (await client.delete("/api/files", params={**f, "path": "sub/b.txt"})).status_code == 204
    assert not (ws / "sub/b.txt").exists()
    actions = [e["action"] for e in (await client.get("/api/audit", params={"action": "file."})).json()["items"]]
    assert actions.count("file.delete") == 2 and actions.count("file.move") == 1
    # untrusted users may not
    token = (await client.post("/api/users", json={"name": "v", "trusted": False})).json()["token"]
    user = {"Authorization": f"Bearer {token}"}
    assert (await client.delete("/api/files", params={**f, "path": "bin.dat"}, headers=user)).status_code == 403
    assert (await client.post("/api/files/move", params={**f, "path": "bin.dat", "to": "x"},
                              headers=user)).status_code == 403
    assert (ws / "bin.dat").exists()
