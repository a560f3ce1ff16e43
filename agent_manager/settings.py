"""Typed settings, loaded in one place.

Precedence, highest first:

1. values passed by the caller (``load_settings(overrides)``; CLI flags arrive this way),
2. environment variables ``AGENT_MANAGER_<FIELD>`` (and Daytona's own ``DAYTONA_API_KEY``,
   ``DAYTONA_API_URL``, ``DAYTONA_TARGET``),
3. the TOML file ``<home>/config.toml`` (written by ``PATCH /api/settings``),
4. the defaults below.

``Settings`` is a pydantic-settings model: its environment source turns each variable into the
field's type (booleans ``on/off``, ``true/false``, ``1/0``; lists comma-separated; numbers
range-checked by the field), so no value is parsed by hand here. The merge itself stays explicit
(rather than pydantic-settings' own source chain) because every value must be traceable to its
source: errors name the variable, option or file line that was wrong, and ``from_env`` tells the
API which settings it must not change.

The data directory itself comes from an override, else ``AGENT_MANAGER_HOME``, else the
platform's user data directory. Backends receive a ``Settings`` object; none of them reads
the environment on its own.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import tomli_w
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, PrivateAttr, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from agent_manager.errors import ConfigError


def _execution_mode(value: str) -> str:
    """``auto`` or an installed backend (the registry decides which exist, plugins.py)."""
    from agent_manager.plugins import check_backend

    return check_backend(value, allow_auto=True)


# TODO(13e): per-backend sections replace the daytona_*/sandbox_* fields below; keep this check.
ExecutionMode = Annotated[str, AfterValidator(_execution_mode)]
ENV_PREFIX = "AGENT_MANAGER_"
CONFIG_FILE = "config.toml"
# Daytona keeps its own variable names so that an existing Daytona setup just works.
DAYTONA_ENV = {"DAYTONA_API_KEY": "daytona_api_key", "DAYTONA_API_URL": "daytona_api_url",
               "DAYTONA_TARGET": "daytona_target"}


def _comma_separated(value: Any) -> Any:
    """An environment variable holds a list as ``a, b, c``; TOML and JSON give a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list of strings that the environment writes comma-separated (NoDecode: not as JSON).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)]


def default_home() -> Path:
    """The platform's user data directory (XDG on Linux)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "agent-manager"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent-manager"


class Settings(BaseSettings):
    """Every knob of the service. Field names are the TOML keys and the env suffixes.

    Constructing one directly uses exactly the values given (and the defaults): only
    ``load_settings`` reads the environment and the config file.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    home: Path = Field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    auth: bool = True
    allowed_hosts: CommaList = Field(default_factory=list)
    # Bodies larger than this are refused with 413 before (or while) being read.
    max_request_bytes: int = Field(8 * 1_048_576, ge=1024)
    # Wrong tokens (bearer or /login) a client may send before it is answered 429 for a while.
    auth_failures_allowed: int = Field(10, ge=1, le=100_000)
    # How long a browser login (session cookie) lasts; logout and token rotation end it sooner.
    session_max_age_s: int = Field(30 * 24 * 3600, ge=60, le=366 * 24 * 3600)

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
    max_stored_output_mb: int = Field(50, ge=0)
    run_retention_days: int = Field(0, ge=0)

    # routing
    execution_mode: ExecutionMode = "auto"
    heavy_cpu: float = Field(2, gt=0)
    heavy_memory_mb: int = Field(4096, gt=0)
    prefer_daytona_for_untrusted: bool = False
    allow_fallback: bool = True

    # users (docs/security.md): what non-admin users' runs may ask for and whom they run as
    run_as_user: str = Field("agent-manager-run", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    user_max_cpu: float = Field(2, gt=0)
    user_max_memory_mb: int = Field(2048, ge=16)
    # Where default agent and orchestration workspaces live (default <home>/workspaces). The data
    # directory is 0700, so local runs of non-admin users (as run_as_user) need this outside it.
    workspaces_dir: Path | None = None

    # sandbox (bubblewrap)
    sandbox_uid: int = 65534  # the uid *inside* the sandbox
    sandbox_user: str = "nobody"  # the host user a root service drops to before bubblewrap
    sandbox_disk_mb: int = Field(2048, ge=1)  # what one run may add to its workspace
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

    # Which settings came from an environment variable (name → variable), set by load_settings:
    # the API shows them and refuses to change them (the variable would win at the next start).
    _from_env: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def from_env(self) -> dict[str, str]:
        return dict(self._from_env)

    @property
    def db_path(self) -> Path:
        return self.home / "agent-manager.db"

    @property
    def token_path(self) -> Path:
        return self.home / "admin-token"

    @property
    def workspaces(self) -> Path:
        return self.workspaces_dir or self.home / "workspaces"

    @property
    def daytona_configured(self) -> bool:
        return self.daytona_api_key is not None and bool(self.daytona_api_key.get_secret_value())


SECRET_FIELDS = frozenset(n for n, f in Settings.model_fields.items() if f.annotation == SecretStr | None)
# Fields that only a restart can change (the listening socket, the data directory, auth); the
# API refuses them live and says so. Every other field takes effect at once: components share
# the one Settings object and read it when they use a value, and the few that build something
# from settings are rebuilt by Service.apply_settings.
RESTART_FIELDS = frozenset({"home", "host", "port", "auth", "workspaces_dir"})
MUTABLE_FIELDS = frozenset(Settings.model_fields) - RESTART_FIELDS


class EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping instead of ``os.environ``
    (``load_settings`` takes the environment as an argument). Names match ignoring case."""

    def __init__(self, model: type[BaseModel], environ: Mapping[str, str], prefix: str) -> None:
        self._environ = environ
        super().__init__(model, env_prefix=prefix)  # type: ignore[arg-type]  # any model with fields

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _find_variable(environ: Mapping[str, str], name: str) -> str | None:
    """The variable in ``environ`` that pydantic-settings reads for ``name`` (case ignored)."""
    if name in environ:
        return name
    return next((key for key in environ if key.lower() == name.lower()), None)


def env_sources(environ: Mapping[str, str]) -> dict[str, str]:
    """Setting name → the environment variable that sets it, for those the environment sets."""
    found: dict[str, str] = {}
    for name in Settings.model_fields:
        variable = _find_variable(environ, ENV_PREFIX + name.upper())
        if variable is not None:
            found[name] = variable
    for env_name, field in DAYTONA_ENV.items():
        if env_name in environ and field not in found:
            found[field] = env_name
    return found


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment sets, each turned into its field's type by pydantic-settings."""
    environ = dict(environ)
    for env_name, field in DAYTONA_ENV.items():  # Daytona's own names, unless ours are set too
        if env_name in environ and _find_variable(environ, ENV_PREFIX + field.upper()) is None:
            environ[ENV_PREFIX + field.upper()] = environ[env_name]
    try:
        return EnvironSource(Settings, environ, ENV_PREFIX)()
    except SettingsError as exc:  # a value that cannot even be decoded (pydantic names the field)
        raise ConfigError(f"invalid settings in the environment: {exc}") from None


def read_config_file(home: Path) -> dict[str, Any]:
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def load_settings(overrides: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge the four sources in the documented order and validate the result."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env_values = _env_values(environ)
    home = Path(overrides.get("home") or env_values.get("home") or default_home()).expanduser()
    from_file = read_config_file(home)
    merged: dict[str, Any] = dict(from_file)
    merged.update(env_values)
    merged.update(overrides)
    merged["home"] = home
    sources = env_sources(environ)
    try:
        settings = Settings(**merged)
        settings._from_env = {k: v for k, v in sources.items() if k not in overrides}
        return settings
    except ValidationError as exc:
        def source(name: str) -> str:
            if name in overrides:
                return f"the option for {name}"
            if name in env_values:
                return f"the environment variable {sources.get(name, ENV_PREFIX + name.upper())}"
            if name in from_file:
                return f"{name} in {home / CONFIG_FILE}"
            return name
        raise ConfigError(describe_errors(exc, source)) from None


def describe_errors(exc: ValidationError, source: Any = str) -> str:
    """One plain sentence per invalid value (pydantic's own text carries a URL and jargon)."""
    parts = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else "settings"
        if error["type"] == "extra_forbidden":
            parts.append(f"{source(name)}: there is no setting called {name!r}")
            continue
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        reason = error["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        parts.append(f"{source(name)} is {shown}, but it should be {reason}"
                     if error["msg"].startswith("Input should be") else f"{source(name)} is {shown}: {reason}")
    return "invalid settings: " + "; ".join(parts) + "."


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
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    # A real TOML writer: every string (quotes, backslashes, CR, control characters) is escaped
    # so that what is written reads back as the same value at the next start.
    text = tomli_w.dumps({key: _plain(val) for key, val in sorted(current.items())})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """TOML has no null and no Path: paths are written as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
