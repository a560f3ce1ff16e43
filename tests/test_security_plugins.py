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
        # Refused in the request itself (a terminal on it): the JSON error says it masked too.
        terminal = await admin.post("/api/terminals", json={"backend": "flaky"}, headers=user)
        assert terminal.status_code >= 400 and "Bearer ********" in terminal.text, terminal.text
        everything = listed + str(found) + events + terminal.text + caplog.text
        assert one not in everything and two not in everything


SQUATTER = """
    from pydantic import BaseModel, ConfigDict, SecretStr

    from agent_manager.executors.local import LocalExecutor
    from agent_manager.plugins import REMOTE, BackendPlugin

    class KeySettings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        key: SecretStr | None = None

    class CpuSettings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        cpu: float = 1.0

    class Api(LocalExecutor):
        name = "daytona_api"

    class Heavy(LocalExecutor):
        name = "heavy"

    # Innocent names whose flat forms are another section's field, or a service setting.
    API = BackendPlugin(name="daytona_api", title="api", capabilities=frozenset({REMOTE}), settings_model=KeySettings,
                        factory=lambda ctx: Api(ctx.settings, ctx.prefix, dict(ctx.environ)))
    HEAVY = BackendPlugin(name="heavy", title="heavy", capabilities=frozenset({REMOTE}), settings_model=CpuSettings,
                          factory=lambda ctx: Heavy(ctx.settings, ctx.prefix, dict(ctx.environ)))
"""


def test_a_section_never_reads_another_sections_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``AGENT_MANAGER_DAYTONA_API_KEY`` is Daytona's key; a plugin called ``daytona_api`` with a
    field ``key`` must not receive it (nor ``heavy.cpu`` the service's ``heavy_cpu``)."""
    from agent_manager.settings import load_settings

    root = tmp_path / "squat-site"
    info = root / "am_test_squat-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: am-test-squat\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[agent_manager.backends]\ndaytona_api = am_test_squat:API\n"
                                           "heavy = am_test_squat:HEAVY\n")
    (root / "am_test_squat.py").write_text(textwrap.dedent(SQUATTER))
    saved = (plugins._backends(), plugins._kinds())
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("AGENT_MANAGER_DAYTONA_API_KEY", "sk-daytonas-own-key-0123456789")
    monkeypatch.setenv("AGENT_MANAGER_HEAVY_CPU", "8")
    plugins.reload()
    try:
        assert {"daytona_api", "heavy"} <= set(plugins.backends())
        settings = load_settings({"home": str(tmp_path / "home")})
        daytona = settings.section("daytona")
        assert daytona is not None and daytona.api_key.get_secret_value() == "sk-daytonas-own-key-0123456789"
        assert settings.heavy_cpu == 8
        assert settings.section("daytona_api") is None and settings.section("heavy") is None
        assert set(settings.from_env) == {"daytona.api_key", "heavy_cpu"}
        assert "would share the names daytona_api_key" in caplog.text
        assert "heavy_cpu" in caplog.text
    finally:
        sys.modules.pop("am_test_squat", None)
        plugins.reload()
        plugins._loaded.update({plugins.BACKEND_GROUP: saved[0], plugins.KIND_GROUP: saved[1]})


PLAINTEXT = """
    from pydantic import BaseModel, ConfigDict

    from agent_manager.executors.local import LocalExecutor
    from agent_manager.plugins import ISOLATED, REMOTE, BackendPlugin

    class Careless(BaseModel):
        model_config = ConfigDict(extra="forbid", validate_assignment=True)
        api_token: str | None = None  # should have been SecretStr
        region: str = "eu"

    class Cloud(LocalExecutor):
        name = "cloudy"

    PLUGIN = BackendPlugin(name="cloudy", title="cloudy", capabilities=frozenset({ISOLATED, REMOTE}),
                           settings_model=Careless, factory=lambda ctx: Cloud(ctx.settings, ctx.prefix, {}))
"""


async def test_a_plain_text_credential_field_is_still_write_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin that types its token as ``str`` instead of ``SecretStr``: GET /api/settings
    (open to every user) and the audit log show the mask, not the token."""
    root = tmp_path / "plain-site"
    info = root / "am_test_plain-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: am-test-plain\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[agent_manager.backends]\ncloudy = am_test_plain:PLUGIN\n")
    (root / "am_test_plain.py").write_text(textwrap.dedent(PLAINTEXT))
    saved = (plugins._backends(), plugins._kinds())
    monkeypatch.syspath_prepend(str(root))
    plugins.reload()
    secret = "tok-cloudy-0123456789abcdef"
    try:
        settings = Settings(home=tmp_path / "home", cloudy={"api_token": secret})
        async with running_service(settings) as svc, in_process_client(settings, svc) as admin:
            token = (await admin.post("/api/users", json={"name": "eve"})).json()["token"]
            user = {"Authorization": f"Bearer {token}"}
            shown = (await admin.get("/api/settings", headers=user)).json()
            assert shown["sections"]["cloudy"] == {"api_token": "********", "region": "eu"}
            fields = {f["name"]: f for i in shown["section_info"] if i["name"] == "cloudy" for f in i["fields"]}
            assert fields["api_token"]["type"] == "secret" and fields["region"]["type"] == "string"
            patched = await admin.patch("/api/settings", json={"cloudy": {"api_token": "********", "region": "us"}})
            assert patched.status_code == 200, patched.text
            assert settings.section("cloudy").api_token == secret  # the mask sent back keeps it
            audit = (await admin.get("/api/audit")).text
            assert secret not in audit and secret not in patched.text
    finally:
        sys.modules.pop("am_test_plain", None)
        plugins.reload()
        plugins._loaded.update({plugins.BACKEND_GROUP: saved[0], plugins.KIND_GROUP: saved[1]})
