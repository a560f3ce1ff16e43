"""/api/settings: read and change the service's settings (secrets are write-only).

The answer has the core settings at the top level (as always), each backend's own section under
``sections`` (``{"daytona": {"api_key": "********", ...}}``) and, in ``section_info``, what a
client needs to show a section it has never heard of: its title and, per field, type, default,
description, choices and bounds (sections.describe). PATCH takes the same shape; a section's
field may also be given by its older flat name (``daytona_api_key``) or as ``daytona.api_key``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import ValidationError

from agent_manager import sections as sect
from agent_manager.errors import Conflict, ValidationFailed
from agent_manager.models import MASK
from agent_manager.service import Service
from agent_manager.settings import (
    MUTABLE_FIELDS,
    RESTART_FIELDS,
    Settings,
    describe_errors,
    error_key,
    write_config_file,
)
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, require_admin, service

router = APIRouter(prefix="/api/settings", tags=["settings"])


def _shown(settings: Settings, key: str) -> Any:
    """A value as the API shows it: secrets only as set (MASK) or not (None)."""
    value = settings.value_of(key)
    if settings.is_secret(key):
        return MASK if value is not None else None
    return value


def public_view(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for name in Settings.model_fields:
        if settings.is_secret(name):
            data[name] = _shown(settings, name)
    data["home"] = str(settings.home)
    plugins = sect.plugins_with_sections()
    data["sections"] = {}
    data["section_info"] = []
    for name, section in settings.sections.items():
        shown = section.model_dump(mode="json")
        for field in type(section).model_fields:
            if settings.is_secret(f"{name}.{field}"):
                shown[field] = _shown(settings, f"{name}.{field}")
        data["sections"][name] = shown
        plugin = plugins.get(name)
        data["section_info"].append({"name": name, "title": plugin.title if plugin else name,
                                     "env_prefix": sect.env_prefix(name), "fields": sect.describe(type(section))})
    from_env = settings.from_env
    live = MUTABLE_FIELDS | {key for key in settings.setting_keys() if "." in key}
    data["mutable"] = [key for key in settings.setting_keys() if key in live and key not in from_env]
    data["restart_required"] = sorted(RESTART_FIELDS)
    data["from_env"] = from_env  # settings key → the environment variable that sets it
    return data


@router.get("", response_model=api.SettingsView)
async def get_settings(svc: Service = Depends(service)) -> dict[str, Any]:
    return _view(svc)


def _view(svc: Service) -> dict[str, Any]:
    # "listening": where the service really listens (`serve --port 0` has port 0 in its settings).
    return {**public_view(svc.settings), "listening": svc.address}


def _current(settings: Settings, key: str) -> Any:
    value = settings.value_of(key)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def settings_keys(body: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """A PATCH body as settings keys: ``{"daytona": {"api_key": ..}}`` (also inside
    ``"sections"``, the shape GET answers with), ``daytona.api_key`` and the older flat
    ``daytona_api_key`` all become ``daytona.api_key``. Anything else is kept as it is (and
    refused as unknown if it is no setting)."""
    models = {name: type(section) for name, section in settings.sections.items()}
    out: dict[str, Any] = {}

    def table(name: str, value: Any) -> None:
        if not isinstance(value, Mapping):
            raise ValidationFailed(f"{name} is a section: send its fields as an object",
                                   [{"field": name, "message": "expected an object"}])
        out.update({f"{name}.{field}": v for field, v in value.items()})

    for key, value in body.items():
        owner = None if key in Settings.model_fields else sect.flat_owner(key, models)
        if key == "sections" and isinstance(value, Mapping):
            for name, fields in value.items():
                if name in models:
                    table(name, fields)
                else:
                    out[name] = fields
        elif key in models and key not in Settings.model_fields:
            table(key, value)
        elif owner is not None:
            out[f"{owner[0]}.{owner[1]}"] = value
        else:
            out[key] = value
    return out


@router.patch("", dependencies=[Depends(require_admin)], response_model=api.SettingsView,
              responses=api.errors(403, 409, 422))
async def patch_settings(request: Request, body: dict[str, Any] = Body(...),
                         svc: Service = Depends(service)) -> dict[str, Any]:
    settings = svc.settings
    changes = settings_keys(body, settings)
    unknown = sorted(set(changes) - set(settings.setting_keys()))
    if unknown:
        raise ValidationFailed(f"unknown setting(s): {', '.join(unknown)}", [{"field": n} for n in unknown])
    fixed = sorted(set(changes) & RESTART_FIELDS)
    if fixed:
        raise ValidationFailed(f"{', '.join(fixed)} needs a restart to change: set it in config.toml, the "
                               "environment or serve's flags, then restart the service",
                               [{"field": n, "message": "needs a restart"} for n in fixed])
    changes = {k: v for k, v in changes.items() if not (settings.is_secret(k) and v == MASK)}
    try:
        candidate = settings.with_changes(changes)
    except ValidationError as exc:
        errors = [{"field": error_key(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise ValidationFailed(describe_errors(exc), errors) from exc
    from_env = settings.from_env
    pinned = sorted(k for k in changes if k in from_env and _current(candidate, k) != _current(settings, k))
    if pinned:
        names = ", ".join(f"{k} (by {from_env[k]})" for k in pinned)
        raise Conflict(f"set by the environment: {names}. The variable wins over a saved value at every start; "
                       "change or unset it where the service is started", [{"field": k} for k in pinned])
    # A form sending back an environment-set value unchanged is not asking to store it.
    changes = {k: v for k, v in changes.items() if k not in from_env}
    await svc.check_settings(candidate)
    write_config_file(settings.home, {k: candidate.value_of(k) for k in changes})
    changed = {k for k in changes if candidate.value_of(k) != settings.value_of(k)}
    for key in changes:
        settings.assign(key, candidate.value_of(key))
    await svc.apply_settings(changed)
    audit(request, "settings.update", None, {k: (MASK if settings.is_secret(k) else candidate.value_of(k))
                                             for k in sorted(changes)})
    return _view(svc)
