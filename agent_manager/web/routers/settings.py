"""/api/settings: read and change the service's settings (secrets are write-only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import ValidationError

from agent_manager.errors import Conflict, ValidationFailed
from agent_manager.models import MASK
from agent_manager.service import Service
from agent_manager.settings import (
    MUTABLE_FIELDS,
    RESTART_FIELDS,
    SECRET_FIELDS,
    Settings,
    describe_errors,
    write_config_file,
)
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, require_admin, service

router = APIRouter(prefix="/api/settings", tags=["settings"])


def public_view(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for name in SECRET_FIELDS:
        data[name] = MASK if getattr(settings, name) is not None else None
    data["home"] = str(settings.home)
    from_env = settings.from_env
    data["mutable"] = sorted(MUTABLE_FIELDS - set(from_env))
    data["restart_required"] = sorted(RESTART_FIELDS)
    data["from_env"] = from_env  # setting → the environment variable that sets it
    return data


@router.get("", response_model=api.SettingsView)
async def get_settings(svc: Service = Depends(service)) -> dict[str, Any]:
    return _view(svc)


def _view(svc: Service) -> dict[str, Any]:
    # "listening": where the service really listens (`serve --port 0` has port 0 in its settings).
    return {**public_view(svc.settings), "listening": svc.address}


def _current(settings: Settings, name: str) -> Any:
    value = getattr(settings, name)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@router.patch("", dependencies=[Depends(require_admin)], response_model=api.SettingsView,
              responses=api.errors(403, 409, 422))
async def patch_settings(request: Request, changes: dict[str, Any] = Body(...),
                   svc: Service = Depends(service)) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(Settings.model_fields))
    if unknown:
        raise ValidationFailed(f"unknown setting(s): {', '.join(unknown)}", [{"field": n} for n in unknown])
    fixed = sorted(set(changes) - MUTABLE_FIELDS)
    if fixed:
        raise ValidationFailed(f"{', '.join(fixed)} needs a restart to change: set it in config.toml, the "
                               "environment or serve's flags, then restart the service",
                               [{"field": n, "message": "needs a restart"} for n in fixed])
    changes = {k: v for k, v in changes.items() if not (k in SECRET_FIELDS and v == MASK)}
    try:
        candidate = Settings(**{**svc.settings.model_dump(), **changes})
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise ValidationFailed(describe_errors(exc), errors) from exc
    from_env = svc.settings.from_env
    pinned = sorted(k for k in changes if k in from_env and _current(candidate, k) != _current(svc.settings, k))
    if pinned:
        names = ", ".join(f"{k} (by {from_env[k]})" for k in pinned)
        raise Conflict(f"set by the environment: {names}. The variable wins over a saved value at every start; "
                       "change or unset it where the service is started", [{"field": k} for k in pinned])
    # A form sending back an environment-set value unchanged is not asking to store it.
    changes = {k: v for k, v in changes.items() if k not in from_env}
    await svc.check_settings(candidate)
    write_config_file(svc.settings.home, {k: getattr(candidate, k) for k in changes})
    changed = {k for k in changes if getattr(candidate, k) != getattr(svc.settings, k)}
    for key in changes:
        setattr(svc.settings, key, getattr(candidate, key))
    await svc.apply_settings(changed)
    audit(request, "settings.update", None, {k: (MASK if k in SECRET_FIELDS else getattr(candidate, k))
                                             for k in sorted(changes)})
    return _view(svc)
