"""Shared fixtures: settings in a temp data dir, the fake CLIs on PATH, an in-process API
client, and a real server process on port 0."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent_manager.executors.pipes import OutputPipes
from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web.app import create_app

pytest_plugins = ["fakes.daytona_fixture", "ui_harness", "terminal_fixtures"]

FAKES_BIN = Path(__file__).parent / "fakes" / "bin"


@pytest.fixture
async def pipes() -> AsyncIterator[tuple[OutputPipes, int, int]]:
    """One reader of a stdout and a stderr pipe, and the pipes' write ends (closed after)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    reader = OutputPipes({"stdout": out_r, "stderr": err_r})
    yield reader, out_w, err_w
    reader.abandon()
    for fd in (out_w, err_w):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def fake_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fake agent CLIs first on PATH (the service and its children inherit it)."""
    monkeypatch.setenv("PATH", f"{FAKES_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return FAKES_BIN


@pytest.fixture
def settings(tmp_path: Path, fake_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", kill_grace_s=0.3, stream_close_grace_s=0.5)


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[Service]:
    svc = Service(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@contextlib.asynccontextmanager
async def in_process_client(settings: Settings, svc: Service) -> AsyncIterator[httpx.AsyncClient]:
    """An API client talking to the app in process, authenticated as the admin."""
    app = create_app(settings, service=svc)
    headers = {"Authorization": f"Bearer {app.state.token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as c:
        yield c


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    async with running_service(settings) as svc:
        yield svc


@pytest.fixture
async def client(settings: Settings, service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_client(settings, service) as c:
        yield c


@dataclass
class LiveServer:
    url: str
    token: str
    home: Path
    proc: subprocess.Popen[str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_server(home: Path, *extra: str, env: dict[str, str] | None = None) -> LiveServer:
    """Start ``agent-manager serve --port 0`` and wait for its listening line."""
    # A clean HOME of its own: shells and agent CLIs the service starts must not read the
    # machine's rc files (root's ~/.bashrc here runs `pyenv rehash`, whose lock a killed shell
    # can leave behind, hanging every later interactive shell for a minute).
    user_home = home.parent / f"{home.name}-user-home"
    user_home.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "HOME": str(user_home), "AGENT_MANAGER_HOME": str(home), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "serve", "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    url = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        proc.kill()
        raise RuntimeError(f"server did not start: {proc.stdout.read()}")
    token = (home / "admin-token").read_text().strip() if (home / "admin-token").exists() else ""
    server = LiveServer(url, token, home, proc)
    for _ in range(100):
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("server never became healthy")


def stop_server(server: LiveServer) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it does not end within 10 s."""
    if server.proc.poll() is None:
        server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


@pytest.fixture
def live_server(tmp_path: Path, fake_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "home", env={"AGENT_MANAGER_KILL_GRACE_S": "0.3"})
    try:
        yield server
    finally:
        stop_server(server)
