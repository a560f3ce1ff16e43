"""Settings precedence: call > env > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_manager.errors import ConfigError
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
    assert s.daytona_configured and s.daytona_api_url == "http://x/api" and s.daytona_target == "eu"
    assert "k-123" not in repr(s)  # the key is a SecretStr


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
