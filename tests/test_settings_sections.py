"""Backend settings sections: each backend's own typed model, loaded from the same four sources
as every setting, with the older flat names still working."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agent_manager import plugins, sections
from agent_manager.errors import ConfigError
from agent_manager.executors.daytona_settings import DaytonaSettings, daytona_section
from agent_manager.executors.sandbox_settings import SandboxSettings
from agent_manager.settings import Settings, load_settings, read_config_file, write_config_file


def _sandbox(settings: Settings) -> SandboxSettings:
    section = settings.section("sandbox")
    assert isinstance(section, SandboxSettings)
    return section


def test_sections_come_from_the_registry() -> None:
    s = Settings()
    assert isinstance(s.section("daytona"), DaytonaSettings) and isinstance(s.section("sandbox"), SandboxSettings)
    assert s.section("local") is None  # declares none
    assert "sandbox.memory_mb" in s.setting_keys() and "sandbox_memory_mb" not in Settings.model_fields


def test_older_flat_config_file_still_loads_and_moves_into_tables(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('port = 9000\ndaytona_api_key = "k-flat"\nsandbox_memory_mb = 1024\n'
                                          'daytona_target = "us"\n[daytona]\ntarget = "eu"\n')
    s = load_settings({"home": tmp_path}, environ={})
    daytona = daytona_section(s)
    assert daytona.configured and daytona.api_key is not None and daytona.api_key.get_secret_value() == "k-flat"
    assert daytona.target == "eu"  # the table wins over the flat key
    assert _sandbox(s).memory_mb == 1024 and s.port == 9000
    write_config_file(tmp_path, {"daytona.warm_pool": 2})
    assert read_config_file(tmp_path) == {"port": 9000, "sandbox": {"memory_mb": 1024},
                                          "daytona": {"api_key": "k-flat", "target": "eu", "warm_pool": 2}}
    assert daytona_section(load_settings({"home": tmp_path}, environ={})).warm_pool == 2


def test_env_names_of_sections(tmp_path: Path) -> None:
    env = {"AGENT_MANAGER_SANDBOX_MEMORY_MB": "512", "AGENT_MANAGER_DAYTONA_API_KEY": "ours",
           "DAYTONA_API_KEY": "theirs", "AGENT_MANAGER_DAYTONA_WARM_POOL": "3"}
    s = load_settings({"home": tmp_path}, environ=env)
    assert _sandbox(s).memory_mb == 512 and daytona_section(s).warm_pool == 3
    key = daytona_section(s).api_key
    assert key is not None and key.get_secret_value() == "ours"  # ours wins over Daytona's own
    assert s.from_env == {"sandbox.memory_mb": "AGENT_MANAGER_SANDBOX_MEMORY_MB",
                          "daytona.api_key": "AGENT_MANAGER_DAYTONA_API_KEY",
                          "daytona.warm_pool": "AGENT_MANAGER_DAYTONA_WARM_POOL"}


def test_sources_combine_field_by_field(tmp_path: Path) -> None:
    """An option for one field of a section keeps the others from the file and the environment."""
    write_config_file(tmp_path, {"daytona.image": "img:1", "daytona.warm_pool": 1, "daytona.target": "us"})
    s = load_settings({"home": tmp_path, "daytona": {"warm_pool": 4}}, environ={"DAYTONA_TARGET": "eu"})
    daytona = daytona_section(s)
    assert (daytona.image, daytona.warm_pool, daytona.target) == ("img:1", 4, "eu")
    assert s.from_env == {"daytona.target": "DAYTONA_TARGET"}


@pytest.mark.parametrize(("given", "environ", "said"), [
    ({}, {"AGENT_MANAGER_SANDBOX_MEMORY_MB": "8"},
     "the environment variable AGENT_MANAGER_SANDBOX_MEMORY_MB is '8', but it should be greater than or equal to 16"),
    ({}, {"AGENT_MANAGER_DAYTONA_WARM_POOL": "many"},
     "the environment variable AGENT_MANAGER_DAYTONA_WARM_POOL is 'many', but it should be a valid integer"),
    ({"daytona": {"warm_pool": 65}}, {}, "the option for daytona.warm_pool is 65, but it should be less than"),
    ({"sandbox_pids_max": 1}, {}, "the option for sandbox.pids_max is 1, but it should be greater than"),
])
def test_errors_name_section_field_and_source(tmp_path: Path, given: dict[str, object], environ: dict[str, str],
                                              said: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"home": tmp_path, **given}, environ=environ)
    assert said in str(info.value) and str(info.value).startswith("invalid settings: ")


def test_file_errors_name_section_field(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[daytona]\nwarm_pool = -2\nnope = 1\n')
    with pytest.raises(ConfigError) as info:
        load_settings({"home": tmp_path}, environ={})
    message = str(info.value)
    assert f"daytona.warm_pool in {tmp_path / 'config.toml'} is -2" in message
    assert "there is no setting called 'daytona.nope'" in message


def test_table_of_a_backend_not_installed_is_kept_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              ) -> None:
    (tmp_path / "config.toml").write_text('port = 9001\n[gone]\nhost = "x"\n')
    with caplog.at_level(logging.WARNING):
        s = load_settings({"home": tmp_path}, environ={})
    assert s.port == 9001 and "[gone] belongs to no installed backend" in caplog.text
    write_config_file(tmp_path, {"sandbox.tmp_mb": 64})
    assert read_config_file(tmp_path) == {"port": 9001, "gone": {"host": "x"}, "sandbox": {"tmp_mb": 64}}


def test_copies_are_independent_and_validated(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, sandbox={"memory_mb": 100})
    copy = s.model_copy(update={"sandbox_memory_mb": 200})
    assert _sandbox(copy).memory_mb == 200 and _sandbox(s).memory_mb == 100
    with pytest.raises(ValueError, match=r"sandbox\.memory_mb"):
        s.with_changes({"sandbox.memory_mb": 1})
    s.assign("sandbox.memory_mb", 300)
    assert s.value_of("sandbox.memory_mb") == 300
    with pytest.raises(ValueError):
        s.assign("sandbox.memory_mb", 1)  # the built-in sections validate assignments too


class DemoSettings(BaseModel):
    """A third-party backend's section, as a plugin package would declare it."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="localhost", description="machine to run on")
    token: SecretStr | None = Field(default=None, description="access token")
    port: int = Field(default=22, ge=1, le=65535, description="port")
    mode: str = Field(default="fast", json_schema_extra={"enum": ["fast", "safe"]}, description="how")


@pytest.fixture
def demo_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    original = plugins.backends()
    demo = plugins.BackendPlugin(name="demo-ssh", title="demo over SSH", capabilities=frozenset(),
                                 factory=lambda ctx: None,  # type: ignore[arg-type,return-value]
                                 settings_model=DemoSettings)
    monkeypatch.setattr(plugins, "backends", lambda: {**original, "demo-ssh": demo})


@pytest.mark.usefixtures("demo_backend")
def test_a_plugins_section_loads_like_the_built_in_ones(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[demo-ssh]\nhost = "build.lan"\n')
    s = load_settings({"home": tmp_path}, environ={"AGENT_MANAGER_DEMO_SSH_PORT": "2222",
                                                   "AGENT_MANAGER_DEMO_SSH_TOKEN": "t0k"})
    demo = s.section("demo-ssh")
    assert isinstance(demo, DemoSettings) and (demo.host, demo.port) == ("build.lan", 2222)
    assert s.is_secret("demo-ssh.token") and "t0k" not in repr(demo)
    with pytest.raises(ConfigError, match=r"AGENT_MANAGER_DEMO_SSH_PORT is '0'"):
        load_settings({"home": tmp_path}, environ={"AGENT_MANAGER_DEMO_SSH_PORT": "0"})
    fields = {f["name"]: f for f in sections.describe(DemoSettings)}
    assert fields["token"]["type"] == "secret" and fields["port"] == {
        "name": "port", "type": "integer", "default": 22, "description": "port", "nullable": False,
        "choices": None, "minimum": 1, "maximum": 65535, "env": None}
    assert fields["mode"]["choices"] == ["fast", "safe"]
    table = sections.reference()
    assert "### `[demo-ssh]` — demo over SSH" in table and "`AGENT_MANAGER_DEMO_SSH_PORT`" in table
    assert "demo-ssh" not in sections.reference(builtin_only=True)


def test_a_wrong_secret_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"home": tmp_path, "daytona": {"api_key": 987654321}}, environ={})
    assert "daytona.api_key" in str(info.value) and "987654321" not in str(info.value)


def test_a_section_may_not_take_a_service_settings_name(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    original = plugins.backends()
    clash = plugins.BackendPlugin(name="port", title="clash", capabilities=frozenset(),
                                  factory=lambda ctx: None,  # type: ignore[arg-type,return-value]
                                  settings_model=DemoSettings)
    not_a_model = plugins.BackendPlugin(name="odd", title="odd", capabilities=frozenset(),
                                        factory=lambda ctx: None,  # type: ignore[arg-type,return-value]
                                        settings_model=dict)  # type: ignore[arg-type]
    monkeypatch.setattr(plugins, "backends", lambda: {**original, "port": clash, "odd": not_a_model})
    with caplog.at_level(logging.ERROR):
        s = Settings(port=1234)
    assert s.port == 1234 and s.section("port") is None and s.section("odd") is None
    assert "taken by a service setting" in caplog.text and "not a pydantic model" in caplog.text


class NeedsHost(BaseModel):
    host: str = Field(description="required: no default")
    token: SecretStr | None = None


def test_a_required_field_without_value_is_named_and_nothing_echoed(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    original = plugins.backends()
    needy = plugins.BackendPlugin(name="needy", title="needy", capabilities=frozenset(),
                                  factory=lambda ctx: None,  # type: ignore[arg-type,return-value]
                                  settings_model=NeedsHost)
    monkeypatch.setattr(plugins, "backends", lambda: {**original, "needy": needy})
    with pytest.raises(ConfigError) as info:
        load_settings({"home": tmp_path}, environ={"AGENT_MANAGER_NEEDY_TOKEN": "tok-4242"})
    assert "needy.host is not set, and it has no default" in str(info.value) and "tok-4242" not in str(info.value)
    s = load_settings({"home": tmp_path}, environ={"AGENT_MANAGER_NEEDY_HOST": "h"})
    assert s.value_of("needy.host") == "h"


def test_client_commands_load_no_plugins(tmp_path: Path) -> None:
    """Client commands (load_settings(sections=False)) need the data directory, address and
    token: they neither load the plugins nor trip over section values (the service checks those)."""
    import subprocess
    import sys

    (tmp_path / "config.toml").write_text('port = 9100\nexecution_mode = "sandbox"\ndaytona_warm_pool = -5\n'
                                          '[sandbox]\nmemory_mb = 1\n')
    code = ("import sys; from agent_manager.settings import load_settings; "
            f"s = load_settings({{'home': {str(tmp_path)!r}}}, environ={{}}, sections=False); "
            "print(s.port, s.sections, 'agent_manager.plugins' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["9100", "{}", "False"], done.stdout + done.stderr
    with pytest.raises(ConfigError, match="sandbox.memory_mb"):  # the service does check them
        load_settings({"home": tmp_path}, environ={})
    from agent_manager import settings as settings_module

    assert settings_module.AUTO == plugins.AUTO
