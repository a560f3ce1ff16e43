"""Fixtures and helpers shared by the terminal test modules (a pytest plugin, see conftest)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from conftest import LiveServer, start_server, stop_server
from fakes.daytona_emulator import DaytonaEmulator

from agent_manager.executors.process import tagged_pids
from agent_manager.service import tag_prefix
from agent_manager.settings import Settings

FAST = {"AGENT_MANAGER_KILL_GRACE_S": "0.3"}
CANARY = "canary-service-secret-5150"


@pytest.fixture
def server(tmp_path: Path, fake_path: Path) -> Iterator[LiveServer]:
    srv = start_server(tmp_path / "home", env={**FAST, "SERVICE_SECRET_TOKEN": CANARY})
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
async def api(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as c:
        yield c


@pytest.fixture
async def wss(server: LiveServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=server.headers) as session:
        yield session


def leftovers(home: Path) -> dict[int, str]:
    return tagged_pids(tag_prefix(Settings(home=home)) + ":")


async def until(check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def daytona_server(daytona_emulator: DaytonaEmulator, tmp_path: Path,
                         fake_path: Path) -> AsyncIterator[LiveServer]:
    env = {**FAST, "DAYTONA_API_KEY": daytona_emulator.api_key, "DAYTONA_API_URL": daytona_emulator.api_url,
           "DAYTONA_TARGET": "us", "AGENT_MANAGER_DAYTONA_CREATE_TIMEOUT_S": "10"}
    srv = await asyncio.to_thread(start_server, tmp_path / "home", env=env)
    try:
        yield srv
    finally:
        await asyncio.to_thread(stop_server, srv)

