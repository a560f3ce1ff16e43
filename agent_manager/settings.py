"""Typed settings, loaded in one place.

Precedence, highest first:

1. values passed by the caller (``load_settings(overrides)``; CLI flags arrive this way),
2. environment variables ``AGENT_MANAGER_<FIELD>`` (and Daytona's own ``DAYTONA_API_KEY``,
   ``DAYTONA_API_URL``, ``DAYTONA_TARGET``),
3. the TOML file ``<home>/config.toml`` (written by ``PATCH /api/settings``),
4. the defaults below.

The data directory itself comes from an override, else ``AGENT_MANAGER_HOME``, else the
platform's user data directory. Backends receive a ``Settings`` object; none of them reads
the environment on its own.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError

from agent_manager.errors import ConfigError

ExecutionMode = Literal["local", "sandbox", "daytona", "auto"]
ENV_PREFIX = "AGENT_MANAGER_"
CONFIG_FILE = "config.toml"
# Daytona keeps its own variable names so that an existing Daytona setup just works.
DAYTONA_ENV = {"DAYTONA_API_KEY": "daytona_api_key", "DAYTONA_API_URL": "daytona_api_url",
               "DAYTONA_TARGET": "daytona_target"}


def default_home() -> Path:
    """The platform's user data directory (XDG on Linux)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "agent-manager"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent-manager"


class Settings(BaseModel):
    """Every knob of the service. Field names are the TOML keys and the env suffixes."""

    model_config = {"extra": "forbid", "validate_assignment": True}

    home: Path = Field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    auth: bool = True
    allowed_hosts: list[str] = Field(default_factory=list)

    # runs
    max_concurrent_runs: int = Field(8, ge=1, le=1024)
    default_timeout_s: float = Field(600, gt=0)
    kill_grace_s: float = Field(3.0, ge=0)
    stream_close_grace_s: float = Field(5.0, ge=0)
    output_cap_bytes: int = Field(1_048_576, ge=1024)
    history_messages: int = Field(20, ge=0)
    history_chars: int = Field(12_000, ge=0)
    stall_timeout_s: float = Field(0, ge=0)
    stall_kill: bool = False

    # routing
    execution_mode: ExecutionMode = "auto"
    heavy_cpu: float = Field(2, gt=0)
    heavy_memory_mb: int = Field(4096, gt=0)
    prefer_daytona_for_untrusted: bool = False
    allow_fallback: bool = True

    # sandbox (bubblewrap)
    sandbox_uid: int = 65534
    sandbox_memory_mb: int = Field(2048, ge=16)
    sandbox_pids_max: int = Field(256, ge=8)
    sandbox_tmp_mb: int = Field(256, ge=1)

    # daytona
    daytona_api_key: SecretStr | None = None
    daytona_api_url: str | None = None
    daytona_target: str | None = None
    daytona_image: str | None = None
    daytona_snapshot: str | None = None
    daytona_auto_stop_minutes: int = Field(15, ge=0)
    daytona_auto_delete_minutes: int = Field(0, ge=-1)
    daytona_create_timeout_s: float = Field(120, gt=0)
    daytona_warm_pool: int = Field(0, ge=0, le=64)
    daytona_max_concurrent_creates: int = Field(32, ge=1, le=4096)

    # terminals (docs/terminals.md)
    terminal_idle_timeout_s: float = Field(300, gt=0)
    terminal_scrollback_bytes: int = Field(262_144, ge=0, le=16 * 1024 * 1024)
    terminal_record: bool = False
    terminal_max: int = Field(32, ge=1, le=1024)
    # projects and workspaces: open workspaces untouched this long are discarded (0 = keep)
    workspace_retention_days: int = Field(14, ge=0)

    # orchestration
    default_planner: str | None = None
    orchestration_max_parallel: int = Field(4, ge=1, le=256)

    @property
    def db_path(self) -> Path:
        return self.home / "agent-manager.db"

    @property
    def token_path(self) -> Path:
        return self.home / "admin-token"

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"

    @property
    def daytona_configured(self) -> bool:
        return self.daytona_api_key is not None and bool(self.daytona_api_key.get_secret_value())


SECRET_FIELDS = frozenset(n for n, f in Settings.model_fields.items() if f.annotation == SecretStr | None)
# Fields a running service may change through the API; the rest need a restart.
MUTABLE_FIELDS = frozenset(Settings.model_fields) - {"home", "host", "port", "auth"}


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _parse_env(name, raw)
    for env_name, field in DAYTONA_ENV.items():
        if env_name in environ and field not in values:
            values[field] = environ[env_name]
    return values


def _parse_env(name: str, raw: str) -> Any:
    annotation = str(Settings.model_fields[name].annotation)
    if "bool" in annotation:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: expected on/off, got {raw!r}")
    if "list" in annotation:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def read_config_file(home: Path) -> dict[str, Any]:
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Merge the four sources in the documented order and validate the result."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env_values = _env_values(environ)
    home = Path(overrides.get("home") or env_values.get("home") or default_home()).expanduser()
    merged: dict[str, Any] = read_config_file(home)
    merged.update(env_values)
    merged.update(overrides)
    merged["home"] = home
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def write_config_file(home: Path, values: dict[str, Any]) -> None:
    """Persist ``values`` into config.toml, keeping keys already there. Written atomically."""
    current = read_config_file(home)
    for key, value in values.items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    lines = [f"{key} = {_toml_value(val)}" for key, val in sorted(current.items())]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
