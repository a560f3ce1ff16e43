"""Settings precedence: call > env > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_manager.errors import ConfigError
from agent_manager.executors.daytona_settings import daytona_section
from agent_manager.settings import load_settings, read_config_file, write_config_file


def test_defaults(tmp_path: Path) -> None:
    s = load_settings({"home": tmp_path}, environ={})
    assert s.host == "127.0.0.1" and s.port == 8765 and s.auth is True and s.execution_mode == "auto"
    assert s.db_path == tmp_path / "agent-manager.db"


def test_precedence_call_over_env_over_file(tmp_path: Path) -> None:
    write_config_file(tmp_path, {"port": 1111, "max_concurrent_runs": 3, "execution_mode": "sandbox"})
    env = {"AGENT_MANAGER_PORT": "2222", "AGENT_MANAGER_MAX_CONCURRENT_RUNS": "5"}
    s = load_settings({"home": tmp_path, "port": 3333}, environ=env)
    assert s.port == 3333  # call wins
    assert s.max_concurrent_runs == 5  # env beats file
    assert s.execution_mode == "sandbox"  # file beats default


def test_home_from_env(tmp_path: Path) -> None:
    s = load_settings(environ={"AGENT_MANAGER_HOME": str(tmp_path / "h")})
    assert s.home == tmp_path / "h"


def test_daytona_standard_variables(tmp_path: Path) -> None:
    env = {"DAYTONA_API_KEY": "k-123", "DAYTONA_API_URL": "http://x/api", "DAYTONA_TARGET": "eu"}
    s = load_settings({"home": tmp_path}, environ=env)
    daytona = daytona_section(s)
    assert daytona.configured and daytona.api_url == "http://x/api" and daytona.target == "eu"
    assert "k-123" not in repr(s) and "k-123" not in repr(daytona)  # the key is a SecretStr
    assert s.from_env == {"daytona.api_key": "DAYTONA_API_KEY", "daytona.api_url": "DAYTONA_API_URL",
                          "daytona.target": "DAYTONA_TARGET"}


@pytest.mark.parametrize("env", [{"AGENT_MANAGER_AUTH": "maybe"}, {"AGENT_MANAGER_PORT": "notaport"},
                                 {"AGENT_MANAGER_EXECUTION_MODE": "cloud"}])
def test_bad_values_are_clear_errors(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings({"home": tmp_path}, environ=env)


def test_bool_and_list_env(tmp_path: Path) -> None:
    s = load_settings({"home": tmp_path}, environ={"AGENT_MANAGER_AUTH": "off",
                                                   "AGENT_MANAGER_ALLOWED_HOSTS": "a.example, b.example"})
    assert s.auth is False and s.allowed_hosts == ["a.example", "b.example"]


def test_config_file_round_trip_keeps_other_keys(tmp_path: Path) -> None:
    write_config_file(tmp_path, {"port": 9000, "default_planner": 'say "hi"'})
    write_config_file(tmp_path, {"max_concurrent_runs": 2})
    assert read_config_file(tmp_path) == {"port": 9000, "default_planner": 'say "hi"', "max_concurrent_runs": 2}
    assert (tmp_path / "config.toml").stat().st_mode & 0o777 == 0o600


def test_broken_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("port = [")
    with pytest.raises(ConfigError, match="config.toml"):
        load_settings({"home": tmp_path}, environ={})


@pytest.mark.parametrize(("raw", "expected"), [("on", True), ("off", False), ("true", True), ("FALSE", False),
                                               ("1", True), ("0", False)])
def test_env_booleans_follow_the_type(tmp_path: Path, raw: str, expected: bool) -> None:
    s = load_settings({"home": tmp_path}, environ={"AGENT_MANAGER_STALL_KILL": raw, "AGENT_MANAGER_AUTH": raw})
    assert s.stall_kill is expected and s.auth is expected


@pytest.mark.parametrize(("env", "named"), [
    ({"AGENT_MANAGER_PORT": "70000"}, "AGENT_MANAGER_PORT is '70000', but it should be less than or equal to 65535"),
    ({"AGENT_MANAGER_HEAVY_CPU": "lots"}, "AGENT_MANAGER_HEAVY_CPU is 'lots', but it should be a valid number"),
    ({"AGENT_MANAGER_STALL_KILL": "maybe"}, "AGENT_MANAGER_STALL_KILL is 'maybe', but it should be a valid boolean"),
    ({"DAYTONA_API_URL": "x", "AGENT_MANAGER_DAYTONA_WARM_POOL": "-1"},
     "AGENT_MANAGER_DAYTONA_WARM_POOL is '-1', but it should be greater than or equal to 0"),
])
def test_env_errors_name_the_variable(tmp_path: Path, env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match="^invalid settings: the environment variable ") as info:
        load_settings({"home": tmp_path}, environ=env)
    assert named in str(info.value)


def test_env_numbers_and_lists_are_typed(tmp_path: Path) -> None:
    s = load_settings({"home": tmp_path}, environ={"AGENT_MANAGER_HEAVY_CPU": "2.5",
                                                   "AGENT_MANAGER_ALLOWED_HOSTS": "one.lan,,two.lan ,",
                                                   "AGENT_MANAGER_WORKSPACES_DIR": str(tmp_path / "w")})
    assert s.heavy_cpu == 2.5 and s.allowed_hosts == ["one.lan", "two.lan"] and s.workspaces == tmp_path / "w"
    assert s.from_env == {"heavy_cpu": "AGENT_MANAGER_HEAVY_CPU", "allowed_hosts": "AGENT_MANAGER_ALLOWED_HOSTS",
                          "workspaces_dir": "AGENT_MANAGER_WORKSPACES_DIR"}


def test_our_daytona_variable_wins_over_daytonas_own(tmp_path: Path) -> None:
    s = load_settings({"home": tmp_path}, environ={"DAYTONA_TARGET": "us", "AGENT_MANAGER_DAYTONA_TARGET": "eu"})
    assert daytona_section(s).target == "eu" and s.from_env == {"daytona.target": "AGENT_MANAGER_DAYTONA_TARGET"}


def test_errors_name_the_config_file_and_the_option(tmp_path: Path) -> None:
    write_config_file(tmp_path, {"max_concurrent_runs": 0})
    with pytest.raises(ConfigError, match=r"max_concurrent_runs in .*config.toml is 0, but it should be greater"):
        load_settings({"home": tmp_path}, environ={})
    with pytest.raises(ConfigError, match=r"the option for port is -1"):
        load_settings({"home": tmp_path, "port": -1, "max_concurrent_runs": 2}, environ={})


def test_constructing_settings_reads_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only load_settings reads the environment: a Settings built from values is exactly those."""
    from agent_manager.settings import Settings

    monkeypatch.setenv("AGENT_MANAGER_PORT", "1234")
    assert Settings(home=tmp_path).port == 8765
    assert load_settings({"home": tmp_path}).port == 1234


def test_writing_the_config_never_follows_a_planted_link(tmp_path: Path) -> None:
    """The old writer opened ``config.tmp`` with O_TRUNC: a link planted there had its target
    overwritten with the config (secrets included). Now every write uses a fresh O_EXCL name."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    home = tmp_path / "home"
    home.mkdir()
    for name in ("config.tmp", "config.toml.tmp", ".config.toml.tmp"):
        (home / name).symlink_to(victim)
    write_config_file(home, {"port": 4444})
    write_config_file(home, {"max_concurrent_runs": 2})
    assert victim.read_text() == "keep me"
    assert read_config_file(home) == {"port": 4444, "max_concurrent_runs": 2}
    assert (home / "config.toml").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in home.iterdir()) == sorted(
        ["config.toml", "config.tmp", "config.toml.tmp", ".config.toml.tmp"])  # no temporary file left behind
