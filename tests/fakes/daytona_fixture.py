"""Pytest fixtures for the Daytona emulator (register with ``pytest_plugins``).

``daytona_emulator`` starts a fresh emulator per test on 127.0.0.1:0, with every
``DAYTONA_*`` variable removed and the cwd moved to an empty directory so the SDK cannot
pick up a developer's ``.env`` (notes pitfall 9). At teardown it fails the test if any
sandbox is left, then kills whatever is still running. ``daytona_settings`` is a
``Settings`` pointing at it with fast timeouts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes.daytona_emulator import DaytonaEmulator

from agent_manager.settings import Settings


@pytest.fixture
async def daytona_emulator(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DaytonaEmulator]:
    for name in list(os.environ):
        if name.startswith("DAYTONA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("clean-cwd"))
    emulator = DaytonaEmulator(tmp_path_factory.mktemp("daytona-sandboxes"))
    await emulator.start()
    try:
        yield emulator
        leaked = sorted(emulator.sandboxes)
        assert not leaked, f"sandboxes left behind in the Daytona emulator: {leaked}"
    finally:
        await emulator.stop()


@pytest.fixture
def daytona_settings(daytona_emulator: DaytonaEmulator, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        daytona={"api_key": daytona_emulator.api_key, "api_url": daytona_emulator.api_url, "target": "us",
                 "create_timeout_s": 10},
        kill_grace_s=0.2,
    )
