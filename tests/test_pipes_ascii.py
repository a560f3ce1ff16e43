"""ASCII output is handed over undecoded (``Chunk.raw``) and stored and sent as those bytes;
everything else is decoded as before, including a character or an invalid sequence split
across reads (then the ASCII that follows goes through the decoder too)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import pytest
from helpers import until, wait_run

from agent_manager import events
from agent_manager.executors.base import Chunk
from agent_manager.executors.pipes import OutputPipes
from agent_manager.service import Service
from agent_manager.store.database import Database
from agent_manager.store.output_files import FIELD, SPILL_MIN_CHARS


async def feed(reader: OutputPipes, fd: int, data: bytes) -> None:
    want = reader.pending_bytes + len(data)
    os.write(fd, data)
    await until(lambda: reader.pending_bytes == want)


def test_a_chunk_has_text_or_ascii_bytes() -> None:
    raw = Chunk("stdout", raw=b"plain\n")
    assert raw.body == b"plain\n" and raw.text == "plain\n" and raw.body == b"plain\n"
    assert raw == Chunk("stdout", "plain\n") and hash(raw) == hash(Chunk("stdout", "plain\n"))
    assert Chunk("stderr", "é").body == "é"
    with pytest.raises(ValueError):
        Chunk("stdout")
    with pytest.raises(ValueError):
        Chunk("stdout", "a", raw=b"a")


async def test_ascii_stays_bytes_and_the_rest_is_decoded(pipes: tuple[OutputPipes, int, int]) -> None:
    reader, out_w, err_w = pipes
    await feed(reader, out_w, b"one ")
    await feed(reader, out_w, b"two ")
    await feed(reader, out_w, "thr\u00e9e ".encode())  # not ASCII: text, a new run of the same stream
    await feed(reader, err_w, b"err\n")
    await feed(reader, out_w, b"four")
    chunks = reader.take()
    assert [(c.stream, c.body) for c in chunks] == [
        ("stdout", b"one two "), ("stdout", "thr\u00e9e "), ("stderr", b"err\n"), ("stdout", b"four")]


@pytest.mark.parametrize(("pieces", "expected"), [
    ([b"abc\xe2\x82", b"\xacxyz"], "abc\u20acxyz"),            # a character split across reads
    ([b"abc\xe2\x82", b"xyz"], "abc\ufffdxyz"),                # cut short, then ASCII: through the decoder
    ([b"ab\xff", b"cd"], "ab\ufffdcd"),                        # an invalid byte
    ([b"ab\xf0\x9f", b"\x98", b"\x80 ok"], "ab\U0001f600 ok"),  # four bytes over three reads
    ([b"x\xc3", b"\xa9", b"tail"], "x\u00e9tail"),
])
async def test_invalid_or_split_utf8_is_decoded_across_reads(pipes: tuple[OutputPipes, int, int],
                                                             pieces: list[bytes], expected: str) -> None:
    reader, out_w, _ = pipes
    got: list[Chunk] = []
    for piece in pieces:
        await feed(reader, out_w, piece)
        got += reader.take()
    assert "".join(c.text for c in got) == expected
    for chunk in got:  # bytes only where they are ASCII and no character was half-read
        assert not isinstance(chunk.body, bytes) or chunk.body.isascii()


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(tmp_path / "db.sqlite")
    database.migrate()
    yield database
    database.close()


async def test_ascii_bytes_and_text_merge_and_store_as_text(db: Database) -> None:
    """Rows built from bytes and text (merged while the writer is busy) store the same JSON as
    rows of text, inline and file-backed; the printed bytes are the text's UTF-8."""
    log = events.EventLog(db, "run_events", "run_id", batched=True, spill=True)
    big = b"y" * SPILL_MIN_CHARS
    with db.write_lock:  # the writer cannot take rows yet: the appends merge
        first = log.append("run_a", "output", {"stream": "stdout", "text": b"bytes "})
        assert log.append("run_a", "output", {"stream": "stdout", "text": "t\u00e9xt "}) == first
        assert log.append("run_a", "output", {"stream": "stdout", "text": b"more"}) == first
        log.append("run_a", "output", {"stream": "stderr", "text": big})
        log.append("run_a", "output", {"stream": "stdout", "text": b"z" * 10})
    await log.drained("run_a")
    await asyncio.sleep(0)
    rows = log.read("run_a", 0, 10)
    assert [(r["data"]["stream"], r["data"]["text"]) for r in rows] == [
        ("stdout", "bytes t\u00e9xt more"), ("stderr", big.decode()), ("stdout", "z" * 10)]
    stored = db.all("SELECT data FROM run_events WHERE run_id = 'run_a' ORDER BY seq")
    assert json.loads(stored[0]["data"]) == {"stream": "stdout", "text": "bytes t\u00e9xt more"}
    assert FIELD in json.loads(stored[1]["data"])
    assert log.printed("run_a", rows[1]["seq"]) == big


WRITER = r"""
import os, sys
os.write(1, b"A" * 70000)                   # a fast ASCII writer: file-backed bytes
os.write(2, b"warn \xff\xfe\n")             # invalid UTF-8 on stderr
os.write(1, "caf\u00e9 \u2713\n".encode())  # text
os.write(1, b"end\xe2\x82")                 # cut short at EOF
"""


async def test_a_run_stores_and_sends_what_was_printed(client: httpx.AsyncClient, service: Service,
                                                       tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text(WRITER)
    r = await client.post("/api/agents", json={"name": "w", "command": sys.executable,
                                               "args": [str(script), "{prompt}"]})
    assert r.status_code == 201, r.text
    run = (await client.post("/api/runs", json={"agent": "w", "prompt": "go"})).json()
    done = await wait_run(client, run["id"])
    assert done["status"] == "succeeded"
    stdout = "A" * 70000 + "caf\u00e9 \u2713\nend\ufffd"
    assert (await client.get(f"/api/runs/{run['id']}/output", params={"stream": "stdout"})).content == stdout.encode()
    stderr = (await client.get(f"/api/runs/{run['id']}/output", params={"stream": "stderr"})).content
    assert stderr == "warn \ufffd\ufffd\n".encode()
    events_ = (await client.get(f"/api/runs/{run['id']}/events", params={"limit": 1000})).json()
    assert "".join(e["data"]["text"] for e in events_ if e["type"] == "output" and e["data"]["stream"] == "stdout") \
        == stdout
    assert done["output"].startswith("A" * 1000)  # the plain-text answer still gets the text
