"""Typed settings, loaded in one place.

Precedence, highest first:

1. values passed by the caller (``load_settings(overrides)``; CLI flags arrive this way),
2. environment variables ``AGENT_MANAGER_<FIELD>`` (and for a backend's section
   ``AGENT_MANAGER_<SECTION>_<FIELD>``, plus a tool's own names such as ``DAYTONA_API_KEY``),
3. the TOML file ``<home>/config.toml`` (written by ``PATCH /api/settings``),
4. the defaults below (and in each section's model).

``Settings`` is a pydantic-settings model: its environment source turns each variable into the
field's type (booleans ``on/off``, ``true/false``, ``1/0``; lists comma-separated; numbers
range-checked by the field), so no value is parsed by hand here. The merge itself stays explicit
(rather than pydantic-settings' own source chain) because every value must be traceable to its
source: errors name the variable, option or file line that was wrong, and ``from_env`` tells the
API which settings it must not change.

Each backend's own knobs are a typed section declared by its plugin (sections.py): the
``Settings`` object carries one instance per installed backend (``settings.section(name)``), and
the backend's executor gets that instance. Settings keys name a core field (``port``) or a
section's field (``daytona.api_key``).

The data directory itself comes from an override, else ``AGENT_MANAGER_HOME``, else the
platform's user data directory. Backends receive their settings; none of them reads the
environment on its own.
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self, cast

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, PrivateAttr, SecretStr, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from agent_manager import sections as sect
from agent_manager import toml_file
from agent_manager.errors import ConfigError

log = logging.getLogger("agent_manager.settings")


AUTO = "auto"  # plugins.AUTO, without importing the registry


def _execution_mode(value: str) -> str:
    """``auto`` or an installed backend (the registry decides which exist, plugins.py)."""
    if value == AUTO:
        return value  # the default: no need to load the plugins to know it is valid
    from agent_manager.plugins import check_backend

    return check_backend(value, allow_auto=True)


ExecutionMode = Annotated[str, AfterValidator(_execution_mode)]
ENV_PREFIX = sect.ENV_PREFIX
CONFIG_FILE = "config.toml"
RETIRED_SECRETS = 8  # replaced secret values still masked in messages


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
    ``load_settings`` reads the environment and the config file. Backend sections are given by
    name (``Settings(daytona={"warm_pool": 2})``) or by their flat keys (``daytona_warm_pool=2``);
    a section not given gets its model's defaults.
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

    # Which settings came from an environment variable (key → variable), set by load_settings:
    # the API shows them and refuses to change them (the variable would win at the next start).
    _from_env: dict[str, str] = PrivateAttr(default_factory=dict)
    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)
    # Which keys are secret depends only on the models (fixed once built): ``scrub`` runs on
    # every run start, and asking all ~50 fields each time was a tenth of a millisecond.
    _secret_keys: tuple[str, ...] | None = PrivateAttr(default=None)
    _retired: list[str] = PrivateAttr(default_factory=list)  # secrets replaced at run time

    def __init__(self, _core_only: bool = False, **values: Any) -> None:
        # _core_only: no backend sections (load_settings(sections=False), for client commands).
        models = {} if _core_only else sect.section_models()
        core, raw = sect.split_flat(values, type(self).model_fields, models)
        errors: list[InitErrorDetails] = []
        built: dict[str, BaseModel] = {}
        for name, model in models.items():
            try:
                built[name] = model.model_validate(raw[name])
            except ValidationError as exc:
                errors += _relocated(exc, (name,))
        try:
            super().__init__(**core)
        except ValidationError as exc:
            errors = _relocated(exc, ()) + errors
        if errors:
            raise ValidationError.from_exception_data("Settings", errors)
        self._sections = built

    def section(self, name: str) -> BaseModel | None:
        """Backend ``name``'s settings section (the one shared, live object), if it declares one."""
        return self._sections.get(name)

    @property
    def sections(self) -> dict[str, BaseModel]:
        return dict(self._sections)

    def setting_keys(self) -> list[str]:
        """Every settings key: core field names, then ``section.field`` for each section."""
        return list(type(self).model_fields) + [f"{name}.{field}" for name, model in self._sections.items()
                                                for field in type(model).model_fields]

    def value_of(self, key: str) -> Any:
        section, _, field = key.rpartition(".")
        return getattr(self._sections[section] if section else self, field)

    def assign(self, key: str, value: Any) -> None:
        """Change one setting of the live service. A secret's old value stays masked by ``scrub``
        (the last few): runs started before the change still use it, and their errors may show it."""
        section, _, field = key.rpartition(".")
        old = _plain_secret(self.value_of(key)) if self.is_secret(key) else None
        setattr(self._sections[section] if section else self, field, value)
        if old and len(old) >= 4 and old != _plain_secret(self.value_of(key)):
            self._retired = [*[r for r in self._retired if r != old], old][-RETIRED_SECRETS:]

    def all_values(self) -> dict[str, Any]:
        """Everything, as ``Settings(**values)`` takes it (sections as tables)."""
        return {**self.model_dump(), **{name: s.model_dump() for name, s in self._sections.items()}}

    def with_changes(self, changes: Mapping[str, Any]) -> Settings:
        """A validated, independent copy (sections too) with ``changes`` applied; keys as
        ``setting_keys()`` names them (``port``, ``daytona.api_key``)."""
        values = self.all_values()
        for key, value in changes.items():
            section, _, field = key.rpartition(".")
            (values[section] if section else values)[field] = value
        copy = Settings(**values)
        copy._from_env = dict(self._from_env)
        return copy

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Like ``with_changes`` (pydantic's own copy would share the section objects and take
        any key unchecked); ``update`` as ``Settings()`` takes values."""
        return cast(Self, self.with_changes(_flatten(update or {}, {n: type(s) for n, s in self._sections.items()})))

    def is_secret(self, key: str) -> bool:
        section, _, field = key.rpartition(".")
        model = type(self._sections[section]) if section else type(self)
        return sect.is_secret(model.model_fields[field], field if section else None)

    def scrub(self, text: str) -> str:
        """``text`` with every secret setting's value (core and sections) shown as the mask.
        For messages that come from a backend or an SDK (availability, start-up failures, run
        errors), which every user sees and which a plugin may have built from its own key."""
        if self._secret_keys is None:
            self._secret_keys = tuple(key for key in self.setting_keys() if self.is_secret(key))
        for key in self._secret_keys:
            secret = _plain_secret(self.value_of(key))  # read now: a secret may have been changed since
            if secret and len(secret) >= 4:
                text = text.replace(secret, "********")
        for secret in self._retired:
            text = text.replace(secret, "********")
        return text

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



def _plain_secret(value: Any) -> str | None:
    secret = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return secret if isinstance(secret, str) else None

def _relocated(exc: ValidationError, prefix: tuple[str, ...]) -> list[InitErrorDetails]:
    """The errors of ``exc`` as they would be reported for the whole Settings (section first),
    each keeping its own message."""
    return [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"].replace("{", "{{").replace("}", "}}")),
                             loc=prefix + tuple(e["loc"]), input=e.get("input"))
            for e in exc.errors(include_url=False)]


# Fields that only a restart can change (the listening socket, the data directory, auth); the
# API refuses them live and says so. Every other field takes effect at once: components share
# the one Settings object (and its sections) and read it when they use a value, and the few that
# build something from settings are rebuilt by Service.apply_settings.
RESTART_FIELDS = frozenset({"home", "host", "port", "auth", "workspaces_dir"})
# Fields whose check needs the plugins: load_settings(sections=False) leaves them at their default.
PLUGIN_CHECKED = frozenset({"execution_mode"})
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


def _env_part(model: type[BaseModel], prefix: str, environ: Mapping[str, str],
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """(the fields of ``model`` the environment sets, typed; field → the variable that set it)."""
    environ = dict(environ)
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        variable = _find_variable(environ, prefix + name.upper())
        other = sect.own_env(info)
        if variable is None and other is not None and other in environ:
            environ[prefix + name.upper()] = environ[other]  # a tool's own name; ours wins
            variable = other
        if variable is not None:
            found[name] = variable
    try:
        return EnvironSource(model, environ, prefix)(), found
    except SettingsError as exc:  # a value that cannot even be decoded (pydantic names the field)
        raise ConfigError(f"invalid settings in the environment: {exc}") from None


def env_settings(environ: Mapping[str, str],
                 models: Mapping[str, type[BaseModel]] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(what the environment sets, as ``Settings(**values)`` takes it; key → variable)."""
    models = sect.section_models() if models is None else models
    values, found = _env_part(Settings, ENV_PREFIX, environ)
    for name, model in models.items():
        part, variables = _env_part(model, sect.env_prefix(name), environ)
        if part:
            values[name] = part
        found.update({f"{name}.{field}": variable for field, variable in variables.items()})
    return values, found


def env_sources(environ: Mapping[str, str]) -> dict[str, str]:
    """Settings key → the environment variable that sets it, for those the environment sets."""
    return env_settings(environ)[1]


def read_config_file(home: Path) -> dict[str, Any]:
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _file_settings(home: Path, models: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """config.toml as ``Settings(**values)`` takes it. A table of a backend that is not
    installed (or failed to load) is left alone: it is kept in the file, and warned about."""
    data = read_config_file(home)
    for key, value in list(data.items()):
        if isinstance(value, dict) and key not in models and key not in Settings.model_fields:
            log.warning("%s: [%s] belongs to no installed backend; ignored", home / CONFIG_FILE, key)
            del data[key]
    return data


def _flatten(values: Mapping[str, Any], models: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """Settings keys (``port``, ``daytona.api_key``) → values, from ``Settings(**values)`` input."""
    core, parts = sect.split_flat(values, Settings.model_fields, models)
    out = dict(core)
    for name, part in parts.items():
        if isinstance(part, Mapping):
            out.update({f"{name}.{field}": value for field, value in part.items()})
        else:
            out[name] = part
    return out


def load_settings(overrides: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None, *,
                  sections: bool = True) -> Settings:
    """Merge the four sources in the documented order and validate the result.

    ``sections=False`` leaves the backends' sections out (and does not load the plugins): what
    client commands need (the data directory, address, token) without their start-up cost;
    section values (and ``execution_mode``) are then neither read nor checked: the service
    checks them."""
    environ = dict(os.environ if environ is None else environ)
    models = sect.section_models() if sections else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env_values, variables = env_settings(environ, models)
    home = Path(overrides.get("home") or env_values.get("home") or default_home()).expanduser()
    # Merged key by key, so that an override of one section field keeps the others of the file.
    in_file = read_config_file(home) if not sections else _file_settings(home, models)
    if not sections:  # nor execution_mode, which only the plugins can check
        in_file = {k: v for k, v in in_file.items() if k in Settings.model_fields and k not in PLUGIN_CHECKED}
        env_values = {k: v for k, v in env_values.items() if k not in PLUGIN_CHECKED}
    from_file = _flatten(in_file, models)
    given = _flatten(overrides, models)
    from_env = _flatten(env_values, models)
    merged: dict[str, Any] = {**from_file, **from_env, **given, "home": home}
    values: dict[str, Any] = {}
    for key, value in merged.items():
        section, _, field = key.rpartition(".")
        if section:
            values.setdefault(section, {})[field] = value
        else:
            values[key] = value
    try:
        settings = Settings(_core_only=not sections, **values)
    except ValidationError as exc:
        def source(name: str) -> str:
            if name in given:
                return f"the option for {name}"
            if name in from_env:
                return f"the environment variable {variables.get(name, name)}"
            if name in from_file:
                return f"{name} in {home / CONFIG_FILE}"
            return name
        raise ConfigError(describe_errors(exc, source)) from None
    settings._from_env = {k: v for k, v in variables.items() if k not in given}
    return settings


def error_key(loc: tuple[Any, ...]) -> str:
    """The settings key an error is about: ``port``, or ``daytona.api_key`` in a section."""
    if not loc:
        return "settings"
    if len(loc) > 1 and str(loc[0]) in sect.section_models():
        return f"{loc[0]}.{loc[1]}"
    return str(loc[0])


def _is_secret_key(key: str) -> bool:
    section, _, field = key.rpartition(".")
    model: type[BaseModel] | None = sect.section_models().get(section) if section else Settings
    info = model.model_fields.get(field) if model is not None else None
    return info is not None and sect.is_secret(info)


def describe_errors(exc: ValidationError, source: Any = str) -> str:
    """One plain sentence per invalid value (pydantic's own text carries a URL and jargon)."""
    parts = []
    for error in exc.errors(include_url=False):
        name = error_key(tuple(error["loc"]))
        if error["type"] == "extra_forbidden":
            parts.append(f"{source(name)}: there is no setting called {name!r}")
            continue
        if error["type"] == "missing":  # its input is the whole section: never shown
            parts.append(f"{name} is not set, and it has no default")
            continue
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        if _is_secret_key(name):
            shown = "the value given"  # a secret, even a wrong one, is never echoed (logs, answers)
        reason = error["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        parts.append(f"{source(name)} is {shown}, but it should be {reason}"
                     if error["msg"].startswith("Input should be") else f"{source(name)} is {shown}: {reason}")
    return "invalid settings: " + "; ".join(parts) + "."


def write_config_file(home: Path, values: Mapping[str, Any]) -> None:
    """Persist ``values`` (settings keys → values; None removes) into config.toml, keeping the
    keys already there. A section's fields go into its ``[section]`` table; a flat key of the
    older form for the same field is moved there. Written atomically, mode 0600."""
    models = sect.section_models()
    current = read_config_file(home)
    for key, value in list(current.items()):  # the older flat form → tables
        owner = None if key in Settings.model_fields else sect.flat_owner(key, models)
        if owner is not None:
            table = current.setdefault(owner[0], {})
            if isinstance(table, dict):
                table.setdefault(owner[1], value)
                del current[key]
    for key, value in values.items():
        owner = None if key in Settings.model_fields or "." in key else sect.flat_owner(key, models)
        section, _, field = key.rpartition(".") if owner is None else (owner[0], ".", owner[1])
        target = current.setdefault(section, {}) if section else current
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            target.pop(field, None)
        else:
            target[field] = value
        if section and not target:
            del current[section]
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    toml_file.write(path, current)

