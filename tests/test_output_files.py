"""Large run output lives in a file per run (store/output_files.py): every API shows the same
events as before, live bytes equal replayed bytes, pruning removes the file, and a file the disk
cut short still reads as valid events."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from helpers import wait_run
from hypothesis import given
from hypothesis import strategies as st

from agent_manager.service import Service
from agent_manager.store import runs as run_store
from agent_manager.store.output_files import FIELD, SPILL_MIN_CHARS, escape, escape_bytes

# Every kind of character JSON treats specially, in big writes (file-backed) and small ones (inline).
WRITER = r"""
import os, sys
piece = 'plain line\n"quoted" back\\slash\ttab\r\x00\x01\x1f é ü 中 😀 \u2028 \u2029 end\n'
big = (piece * 4000).encode()
os.write(1, big)
os.write(2, b"small stderr \x07 bell\n")
os.write(1, b"tail without newline")
"""
EXPECTED_STDOUT = ('plain line\n"quoted" back\\slash\ttab\r\x00\x01\x1f é ü 中 😀 \u2028 \u2029 end\n' * 4000
                   + "tail without newline")


@pytest.mark.parametrize("text", ['a"b\\c\nd', "tab\there\r\n", "\x00\x01\x1f\x7f", "é 中 😀 \u2028\u2029",
                                  "x" * 10, "\\n is not a newline", "\ud800 lone surrogate"])
def test_escape_is_exactly_what_json_writes(text: str) -> None:
    assert escape(text) == json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("code", range(32))
def test_every_control_character_is_escaped_wherever_it_is(code: int) -> None:
    """The fast path's check names each control byte; a missing one would send it raw (bad JSON)."""
    text = "plain line\n" * 500 + chr(code) + " tail"
    assert escape(text) == json.dumps(text, ensure_ascii=False)[1:-1].encode()


@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=200))
def test_escape_matches_json_on_any_text(text: str) -> None:
    """Any character, lone surrogates included (``Cs`` is not excluded): orjson's escape and the
    standard encoder's fallback together write exactly what the standard encoder writes."""
    assert escape(text) == json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")


def test_bytes_that_are_not_utf8_escape_as_replacement_characters() -> None:
    """Only a file changed behind the service's back holds such bytes; its stream still is JSON."""
    assert escape_bytes(b"ok \xff\xfe end\n" * 1000) == json.dumps("ok \ufffd\ufffd end\n" * 1000,
                                                                    ensure_ascii=False)[1:-1].encode()


def _sse(body: bytes) -> list[tuple[str, dict]]:
    out = []
    for frame in body.split(b"\n\n"):
        event, data = "", None
        for line in frame.split(b"\n"):
            if line.startswith(b"event: "):
                event = line[7:].decode()
            elif line.startswith(b"data: "):
                data = json.loads(line[6:])
        if data is not None:
            out.append((event, data))
    return out


async def test_large_output_goes_to_a_file_and_reads_back_the_same(client: httpx.AsyncClient, service: Service,
                                                                    tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    r = await client.post("/api/agents", json={"name": "big", "command": sys.executable, "args": [str(script)]})
    assert r.status_code == 201, r.text
    run = (await client.post("/api/runs", json={"agent": "big", "prompt": "go"})).json()
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded", done

    rows = service.database.all("SELECT type, data FROM run_events WHERE run_id = ? ORDER BY seq", (run["id"],))
    stored = [json.loads(row["data"]) for row in rows if row["type"] == "output"]
    assert any(FIELD in data and "text" not in data for data in stored), "no output went to the run's file"
    assert any("text" in data for data in stored), "the small stderr chunk should stay inline"
    path = service.database.output_files.path(run["id"])  # type: ignore[union-attr]
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600

    as_json = (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 10000})).json()
    stdout = "".join(e["data"]["text"] for e in as_json if e["type"] == "output" and e["data"]["stream"] == "stdout")
    stderr = "".join(e["data"]["text"] for e in as_json if e["type"] == "output" and e["data"]["stream"] == "stderr")
    assert stdout == EXPECTED_STDOUT
    assert stderr == "small stderr \x07 bell\n"
    assert all(FIELD not in e["data"] for e in as_json)

    sse = await client.get(f"/api/runs/{run['id']}/events", headers={"Accept": "text/event-stream"})
    frames = _sse(sse.content)
    assert [e for e, _ in frames] == [e["type"] for e in as_json]
    for (_, data), event in zip(frames, as_json, strict=True):
        assert "at" in data
        assert {k: v for k, v in data.items() if k != "at"} == event["data"]

    # The orchestration engine and other in-process readers see the same thing.
    in_process = service.runs.events.read(run["id"], 0, 10000)
    assert [e["data"] for e in in_process] == [e["data"] for e in as_json]

    assert run_store.prune(service.database, "9999-01-01T00:00:00.000Z") == 1
    assert not path.exists()


async def test_a_file_cut_short_still_reads_as_valid_events(client: httpx.AsyncClient, service: Service,
                                                            tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    await client.post("/api/agents", json={"name": "big", "command": sys.executable, "args": [str(script)]})
    run = (await client.post("/api/runs", json={"agent": "big", "prompt": "go"})).json()
    await wait_run(client, run["id"])
    before = {e["seq"]: e["data"].get("text") for e in
              (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 10000})).json()}
    path = service.database.output_files.path(run["id"])  # type: ignore[union-attr]
    size = path.stat().st_size
    for cut in range(size - 1, size - 40, -1):  # every kind of place: inside an escape, a character
        with path.open("r+b") as f:
            f.truncate(cut)
        events = (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 10000})).json()
        assert [e["seq"] for e in events] == sorted(before)
        for event in events:  # each text is what it was, or a prefix of it
            text = event["data"].get("text")
            assert text == before[event["seq"]] or (text is not None and before[event["seq"]].startswith(text))
        sse = await client.get(f"/api/runs/{run['id']}/events", headers={"Accept": "text/event-stream"})
        assert [e for e, _ in _sse(sse.content)][-1] == "run.finished"


def test_only_run_ids_name_files(tmp_path: Path) -> None:
    from agent_manager.store.output_files import OutputFiles

    files = OutputFiles(tmp_path)
    for bad in ("../etc/passwd", "a/b", "", ".", "x" * 65, "run id"):
        with pytest.raises(ValueError):
            files.path(bad)
    assert files.path("run_0123abcd").parent == tmp_path
    assert SPILL_MIN_CHARS > 0


def test_a_big_file_is_dropped_from_the_page_cache_behind_the_writer(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``DROP_STEP`` appended, the part more than ``DROP_LAG`` behind the end is advised
    out of the page cache; nothing near the end is, and every byte reads back."""
    import os

    from agent_manager.store import output_files

    monkeypatch.setattr(output_files, "DROP_STEP", 64 * 1024)
    monkeypatch.setattr(output_files, "DROP_LAG", 128 * 1024)
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert offset + length <= os.fstat(fd).st_size - 128 * 1024, "never within DROP_LAG of the end"
        advised.append((offset, length, advice))
        real(fd, offset, length, advice)
    monkeypatch.setattr(output_files.os, "posix_fadvise", record)
    files = output_files.OutputFiles(tmp_path / "run-output")
    written = b""
    for i in range(40):
        appender = files.appender()  # one per batch, as the writer thread does
        body = bytes([65 + i % 26]) * (10_000 + 97 * i)
        offset, length = appender.append("run_x", body)
        assert (offset, length) == (len(written), len(body))
        written += body
        appender.close()
    assert len(advised) >= len(written) // (64 * 1024) - 3, advised
    assert all(advice == os.POSIX_FADV_DONTNEED and offset == 0 for offset, _, advice in advised)
    assert files.path("run_x").read_bytes() == written
    fd = files.open("run_x")
    assert fd is not None
    try:
        assert b"".join(files.raw("run_x", FIELD, 5, len(written) - 5, fd)) == written[5:]
    finally:
        os.close(fd)
    small = output_files.OutputFiles(tmp_path / "small")
    advised.clear()
    appender = small.appender()
    appender.append("run_y", b"y" * 100_000)  # below DROP_LAG: the page cache keeps all of it
    appender.close()
    assert advised == []


def test_a_long_read_asks_for_read_ahead_within_its_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay of a long range (its file may have left the page cache) asks the kernel to read
    ahead, never past the range, never with length 0 (which means "to the end of the file")."""
    import os

    from agent_manager.store import output_files

    monkeypatch.setattr(output_files, "READ_BLOCK", 1000)
    monkeypatch.setattr(output_files, "READ_AHEAD", 3000)
    files = output_files.OutputFiles(tmp_path / "run-output")
    appender = files.appender()
    data = bytes(range(256)) * 200
    appender.append("run_r", data)
    appender.close()
    asked: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        asked.append((offset, length))
        real(fd, offset, length, advice)
    monkeypatch.setattr(output_files.os, "posix_fadvise", record)
    fd = files.open("run_r")
    assert fd is not None
    try:
        for start, length in ((0, len(data)), (123, 20_000), (5, 999), (40_000, 11_200)):
            asked.clear()
            assert b"".join(files.raw("run_r", FIELD, start, length, fd)) == data[start:start + length]
            assert all(n > 0 and start < offset and offset + n <= start + length for offset, n in asked), asked
            covered = sorted(asked)
            if length > 1000:
                assert covered and covered[0][0] == start + 1000, "ahead of the first piece"
                assert all(a + n == b for (a, n), (b, _) in zip(covered, covered[1:], strict=False)), "no gaps"
                assert covered[-1][0] + covered[-1][1] == start + length, "up to the range's end"
            else:
                assert asked == []
    finally:
        os.close(fd)
    asked.clear()
    assert b"".join(files.raw("run_r", FIELD, 0, 5000)) == data[:5000]  # no fd: short reads, no advice
    assert asked == []


@given(st.text(st.characters(codec="utf-8"), max_size=300), st.booleans())
def test_a_frame_is_exactly_the_event_json_writes(text: str, in_memory: bool) -> None:
    """An SSE frame's payload (made in one orjson call) is byte for byte what the standard
    encoder writes for the event, from the printed bytes in memory and from the run's file."""
    import tempfile

    from agent_manager.store.output_files import OutputFiles

    raw = text.encode()
    with tempfile.TemporaryDirectory() as tmp:
        files = OutputFiles(Path(tmp))
        appender = files.appender()
        offset, length = appender.append("run_1", raw)
        appender.close()
        data = json.dumps({"stream": "stdout", FIELD: [offset, length]})
        frame = files.frame("run_1", data, "2026-12-02T08:00:00.000Z", raw if in_memory else None)
    assert frame is not None
    expected = {"at": "2026-12-02T08:00:00.000Z", "stream": "stdout", "text": text}
    assert b"".join(frame) == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
