"""Input files reach a run's workspace through one writer (executors.identity.write_files): a
workspace earlier runs of less trusted users wrote to may hold traps under the files' names."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent_manager.errors import ExecutionError
from agent_manager.executors.identity import prepare_workspace


def test_writes_and_overwrites_inside_the_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    prepare_workspace(ws, {"a.txt": b"first", "sub/dir/b.txt": b"b"}, None)
    prepare_workspace(ws, {"a.txt": b"2"}, None)
    assert (ws / "a.txt").read_bytes() == b"2" and (ws / "sub/dir/b.txt").read_bytes() == b"b"


@pytest.mark.parametrize("rel", ["../out.txt", "/etc/x", "a/../../b", "", "."])
def test_paths_leaving_the_workspace_are_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ExecutionError, match="inside the workspace"):
        prepare_workspace(tmp_path / "ws", {rel: b"x"}, None)
    assert not (tmp_path / "out.txt").exists()


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    ws, victim = tmp_path / "ws", tmp_path / "victim"
    ws.mkdir()
    victim.write_text("keep")
    (ws / "in.txt").symlink_to(victim)
    (ws / "dir").symlink_to(tmp_path)
    for rel in ("in.txt", "dir/victim"):
        with pytest.raises(ExecutionError, match="plain file|symbolic link"):
            prepare_workspace(ws, {rel: b"overwritten"}, None)
    assert victim.read_text() == "keep"


def test_a_planted_hard_link_is_neither_truncated_nor_written(tmp_path: Path) -> None:
    ws, victim = tmp_path / "ws", tmp_path / "victim"
    ws.mkdir()
    victim.write_text("keep")
    os.link(victim, ws / "in.txt")
    with pytest.raises(ExecutionError, match="plain file"):
        prepare_workspace(ws, {"in.txt": b"overwritten"}, None)
    assert victim.read_text() == "keep"


def test_a_planted_fifo_fails_instead_of_hanging(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    os.mkfifo(ws / "in.txt")
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            prepare_workspace(ws, {"in.txt": b"x"}, None)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the writer so the thread ends, then fail
        os.close(os.open(ws / "in.txt", os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("writing an input file over a FIFO blocked")
    assert isinstance(outcome[0], ExecutionError) and "plain file" in outcome[0].message
