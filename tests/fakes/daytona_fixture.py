"""Pytest fixtures for the Daytona emulator (register with ``pytest_plugins``).

``daytona_emulator`` starts a fresh emulator per test on 127.0.0.1:0, with every
``DAYTONA_*`` variable removed and the cwd moved to an empty directory so the SDK cannot
pick up a developer's ``.env`` (notes pitfall 9). At teardown it fails the test if any
sandbox is left, then kills whatever is still running. ``daytona_settings`` is a
``Settings`` pointing at it with fast timeouts. ``daytona_tls_emulator`` / ``daytona_tls_settings``
are the same over HTTPS and WSS, as Daytona serves them (a throwaway certificate made by
``openssl``, trusted through ``SSL_CERT_FILE``, which the Daytona worker keeps).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes.daytona_emulator import DaytonaEmulator, self_signed

from agent_manager.settings import Settings


async def _emulator(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                    tls: bool) -> AsyncIterator[DaytonaEmulator]:
    for name in list(os.environ):
        if name.startswith("DAYTONA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("clean-cwd"))
    emulator = DaytonaEmulator(tmp_path_factory.mktemp("daytona-sandboxes"))
    if tls:
        cert, key = self_signed(tmp_path_factory.mktemp("daytona-tls"))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        emulator.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        emulator.tls.load_cert_chain(cert, key)
    await emulator.start()
    try:
        yield emulator
        leaked = sorted(emulator.sandboxes)
        assert not leaked, f"sandboxes left behind in the Daytona emulator: {leaked}"
    finally:
        await emulator.stop()


def _settings(emulator: DaytonaEmulator, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        daytona={"api_key": emulator.api_key, "api_url": emulator.api_url, "target": "us", "create_timeout_s": 10},
        kill_grace_s=0.2,
    )


@pytest.fixture
async def daytona_emulator(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DaytonaEmulator]:
    async for emulator in _emulator(tmp_path_factory, monkeypatch, tls=False):
        yield emulator


@pytest.fixture
def daytona_settings(daytona_emulator: DaytonaEmulator, tmp_path: Path) -> Settings:
    return _settings(daytona_emulator, tmp_path)


@pytest.fixture
async def daytona_tls_emulator(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DaytonaEmulator]:
    async for emulator in _emulator(tmp_path_factory, monkeypatch, tls=True):
        yield emulator


@pytest.fixture
def daytona_tls_settings(daytona_tls_emulator: DaytonaEmulator, tmp_path: Path) -> Settings:
    return _settings(daytona_tls_emulator, tmp_path)
