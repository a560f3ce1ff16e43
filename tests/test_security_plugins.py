"""Issue 13, attacked from outside: what an installed backend plugin's capabilities let users do.

Routing trusts a plugin's ``capabilities`` (docs/plugins.md): an untrusted user's run may only
go to a backend that claims ``isolated``. A plugin backend that is merely ``remote`` (an SSH
runner) or claims nothing runs what it is given as it is, so it must be refused to them
exactly like ``local`` — whether the run, the agent or ``execution_mode`` names it.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import in_process_client, running_service

from agent_manager import plugins
from agent_manager.settings import Settings

RELAY = """
    from agent_manager.executors.local import LocalExecutor
    from agent_manager.plugins import REMOTE, BackendPlugin

    class Relay(LocalExecutor):
        name = "relay"

    class Bare(LocalExecutor):
        name = "bare"

    # "Remote" (think: SSH to a build box) but no isolation claim: it runs what it is given.
    PLUGIN = BackendPlugin(name="relay", title="relay", capabilities=frozenset({REMOTE}),
                           factory=lambda ctx: Relay(ctx.settings, ctx.prefix, dict(ctx.environ)))
    BARE = BackendPlugin(name="bare", title="bare", capabilities=frozenset(),
                         factory=lambda ctx: Bare(ctx.settings, ctx.prefix, dict(ctx.environ)))
"""


@pytest.fixture
def relay_installed(tmp_path: Path) -> Iterator[None]:
    """The plugin laid out as pip leaves it, on sys.path; the registry restored after."""
    root = tmp_path / "site"
    info = root / "am_test_relay-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: am-test-relay\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[agent_manager.backends]\nrelay = am_test_relay:PLUGIN\n"
                                           "bare = am_test_relay:BARE\n")
    (root / "am_test_relay.py").write_text(textwrap.dedent(RELAY))
    saved = (plugins._backends(), plugins._kinds())
    sys.path.insert(0, str(root))
    plugins.reload()
    try:
        yield
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("am_test_relay", None)
        plugins.reload()
        plugins._loaded.update({plugins.BACKEND_GROUP: saved[0], plugins.KIND_GROUP: saved[1]})


async def test_untrusted_users_never_reach_a_plugin_backend_that_is_not_isolated(
        settings: Settings, relay_installed: None) -> None:
    assert {"relay", "bare"} <= set(plugins.backends())
    async with running_service(settings) as svc, in_process_client(settings, svc) as admin:
        assert {"relay", "bare"} <= set(svc.executors)
        token = (await admin.post("/api/users", json={"name": "mallory"})).json()["token"]
        await admin.post("/api/agents", json={"name": "idc", "command": "id"})
        await admin.post("/api/agents", json={"name": "pinned", "command": "id", "backend": "relay"})
        user = {"Authorization": f"Bearer {token}"}
        for backend in ("relay", "bare"):
            r = await admin.post("/api/runs", json={"agent": "idc", "prompt": "x", "backend": backend}, headers=user)
            assert r.status_code == 403, r.text
            assert "must be isolated" in r.json()["error"]["message"]
        r = await admin.post("/api/runs", json={"agent": "pinned", "prompt": "x"}, headers=user)
        assert r.status_code == 403, r.text
        r = await admin.patch("/api/settings", json={"execution_mode": "relay"})
        assert r.status_code == 200, r.text
        r = await admin.post("/api/runs", json={"agent": "idc", "prompt": "x"}, headers=user)
        assert r.status_code == 403, r.text
        runs = (await admin.get("/api/runs")).json()["items"]
        assert runs == []  # nothing was started for them


LEAKY = """
    from pydantic import BaseModel, ConfigDict, SecretStr

    from agent_manager.executors.base import Availability
    from agent_manager.executors.local import LocalExecutor
    from agent_manager.plugins import ISOLATED, REMOTE, BackendPlugin

    class KeySettings(BaseModel):
        model_config = ConfigDict(extra="forbid", validate_assignment=True)
        key: SecretStr | None = None

    def _key(ctx):
        return ctx.section.key.get_secret_value()

    def refuse(ctx):
        # An SDK that puts the credential it was given into its error (it happens).
        raise RuntimeError(f"login refused for api key {_key(ctx)}")

    class Flaky(LocalExecutor):
        name = "flaky"

        def __init__(self, ctx):
            super().__init__(ctx.settings, ctx.prefix, dict(ctx.environ))
            self.ctx = ctx

        async def available(self):
            return Availability(False, f"401 from https://cloud.example (Authorization: Bearer {_key(self.ctx)})")

    BROKEN = BackendPlugin(name="broken", title="broken", capabilities=frozenset({ISOLATED, REMOTE}),
                           factory=refuse, settings_model=KeySettings)
    FLAKY = BackendPlugin(name="flaky", title="flaky", capabilities=frozenset({ISOLATED, REMOTE}),
                          factory=Flaky, settings_model=KeySettings)
"""


@pytest.fixture
def leaky_installed(tmp_path: Path) -> Iterator[None]:
    root = tmp_path / "leaky-site"
    info = root / "am_test_leaky-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: am-test-leaky\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[agent_manager.backends]\nbroken = am_test_leaky:BROKEN\n"
                                           "flaky = am_test_leaky:FLAKY\n")
    (root / "am_test_leaky.py").write_text(textwrap.dedent(LEAKY))
    saved = (plugins._backends(), plugins._kinds())
    sys.path.insert(0, str(root))
    plugins.reload()
    try:
        yield
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("am_test_leaky", None)
        plugins.reload()
        plugins._loaded.update({plugins.BACKEND_GROUP: saved[0], plugins.KIND_GROUP: saved[1]})


async def test_a_plugins_key_in_its_error_never_reaches_users_or_the_log(
        tmp_path: Path, leaky_installed: None, caplog: pytest.LogCaptureFixture) -> None:
    """A backend whose factory or availability check words its failure with its own API key:
    ``GET /api/backends`` (open to every user), the run's error and route reason, its events
    and the log show the mask instead."""
    one, two = "sk-broken-0123456789abcdef", "sk-flaky-fedcba9876543210"
    settings = Settings(home=tmp_path / "home", broken={"key": one}, flaky={"key": two})
    async with running_service(settings) as svc, in_process_client(settings, svc) as admin:
        token = (await admin.post("/api/users", json={"name": "eve"})).json()["token"]
        user = {"Authorization": f"Bearer {token}"}
        listed = (await admin.get("/api/backends", headers=user)).text
        assert "login refused for api key ********" in listed and "Bearer ********" in listed
        await admin.post("/api/agents", json={"name": "idc", "command": "id"})
        run = (await admin.post("/api/runs", json={"agent": "idc", "prompt": "x", "backend": "flaky"},
                                headers=user)).json()
        for _ in range(200):
            found = (await admin.get(f"/api/runs/{run['id']}", headers=user)).json()
            if found["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.02)
        assert found["status"] == "failed" and "Bearer ********" in found["error"], found
        events = (await admin.get(f"/api/runs/{run['id']}/events", headers=user)).text
        everything = listed + str(found) + events + caplog.text
        assert one not in everything and two not in everything
