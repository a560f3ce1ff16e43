"""Issue 13, attacked from outside: what an installed backend plugin's capabilities let users do.

Routing trusts a plugin's ``capabilities`` (docs/plugins.md): an untrusted user's run may only
go to a backend that claims ``isolated``. A plugin backend that is merely ``remote`` (an SSH
runner) or claims nothing runs what it is given as it is, so it must be refused to them
exactly like ``local`` — whether the run, the agent or ``execution_mode`` names it.
"""

from __future__ import annotations

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
