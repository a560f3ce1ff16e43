"""A backend's own settings section through the API: shown with its description, changed with
validation naming ``section.field``, secrets write-only, and the backend following the change
(a new executor for ``rebuild_on`` fields, ``settings_changed`` for the others)."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import in_process_client, running_service
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agent_manager import plugins
from agent_manager.errors import ExecutorUnavailable
from agent_manager.executors.base import Availability
from agent_manager.service import Service
from agent_manager.settings import Settings, read_config_file


class DemoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = Field(default="localhost", description="machine to run on")
    token: SecretStr | None = Field(default=None, description="access token")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port")


class DemoExecutor:
    """Runs nothing: it records what the service hands it."""

    name = "demo-ssh"
    built: list[DemoExecutor] = []

    def __init__(self, ctx: plugins.BackendContext) -> None:
        self.section = ctx.section
        self.changes: list[set[str]] = []
        self.closed = False
        DemoExecutor.built.append(self)

    async def available(self) -> Availability:
        return Availability(False, "demo: nothing to run on")

    async def start(self, spec: Any) -> Any:
        raise ExecutorUnavailable("demo: nothing to run on")

    async def settings_changed(self, changed: set[str]) -> None:
        self.changes.append(changed)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def demo(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    original = plugins.backends()
    plugin = plugins.BackendPlugin(name="demo-ssh", title="demo over SSH", capabilities=frozenset(),
                                   factory=DemoExecutor,  # type: ignore[arg-type]
                                   settings_model=DemoSettings, rebuild_on=frozenset({"host"}))
    monkeypatch.setattr(plugins, "backends", lambda: {**original, "demo-ssh": plugin})
    DemoExecutor.built.clear()
    settings = Settings(**settings.all_values())  # now with the demo section
    async with running_service(settings) as svc, in_process_client(settings, svc) as client:
        yield svc, client


async def test_a_plugins_section_through_the_api(demo: tuple[Service, httpx.AsyncClient]) -> None:
    svc, client = demo
    body = (await client.get("/api/settings")).json()
    assert body["sections"]["demo-ssh"] == {"host": "localhost", "token": None, "port": 22}
    info = {s["name"]: s for s in body["section_info"]}["demo-ssh"]
    assert info["title"] == "demo over SSH" and info["env_prefix"] == "AGENT_MANAGER_DEMO_SSH_"
    assert [(f["name"], f["type"], f["default"]) for f in info["fields"]] == [
        ("host", "string", "localhost"), ("token", "secret", None), ("port", "integer", 22)]
    assert {"demo-ssh.host", "demo-ssh.token", "demo-ssh.port"} <= set(body["mutable"])
    executor = svc.executors["demo-ssh"]
    assert isinstance(executor, DemoExecutor) and executor.section is svc.settings.section("demo-ssh")

    r = await client.patch("/api/settings", json={"demo-ssh": {"token": "s3cret-tok", "port": 2200}})
    assert r.status_code == 200, r.text
    assert r.json()["sections"]["demo-ssh"]["token"] == "********" and "s3cret-tok" not in r.text
    assert "s3cret-tok" not in (await client.get("/api/settings")).text
    assert executor.section.port == 2200 and executor.changes == [{"token", "port"}]  # type: ignore[attr-defined]
    saved = read_config_file(svc.settings.home)
    assert saved["demo-ssh"] == {"port": 2200, "token": "s3cret-tok"}
    assert stat.S_IMODE((Path(svc.settings.home) / "config.toml").stat().st_mode) == 0o600

    r = await client.patch("/api/settings", json={"demo-ssh": {"port": 0}, "heavy_cpu": 3})
    assert r.status_code == 422
    assert "demo-ssh.port" in r.json()["error"]["message"]
    assert [d["field"] for d in r.json()["error"]["details"]] == ["demo-ssh.port"]
    assert executor.section.port == 2200 and svc.settings.heavy_cpu != 3  # type: ignore[attr-defined]

    # A rebuild_on field: new runs get a new executor; the old one is closed when idle.
    r = await client.patch("/api/settings", json={"demo-ssh.host": "build.lan"})
    assert r.status_code == 200, r.text
    new = svc.executors["demo-ssh"]
    assert new is not executor and isinstance(new, DemoExecutor) and new.section.host == "build.lan"  # type: ignore[attr-defined]
    assert len(DemoExecutor.built) == 2
    audit = (await client.get("/api/audit", params={"limit": 10})).json()
    assert "s3cret-tok" not in str(audit)
