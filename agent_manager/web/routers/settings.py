"""/api/settings: read and change the service's settings (secrets are write-only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import ValidationError

from agent_manager.errors import Forbidden, ValidationFailed
from agent_manager.models import MASK
from agent_manager.service import Service
from agent_manager.settings import MUTABLE_FIELDS, SECRET_FIELDS, Settings, write_config_file
from agent_manager.web.deps import audit, principal, service

router = APIRouter(prefix="/api/settings", tags=["settings"])


def public_view(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for name in SECRET_FIELDS:
        data[name] = MASK if getattr(settings, name) is not None else None
    data["home"] = str(settings.home)
    data["mutable"] = sorted(MUTABLE_FIELDS)
    return data


@router.get("")
async def get_settings(svc: Service = Depends(service)) -> dict[str, Any]:
    return public_view(svc.settings)


@router.patch("")
async def patch_settings(request: Request, changes: dict[str, Any] = Body(...),
                   svc: Service = Depends(service)) -> dict[str, Any]:
    if not principal(request).get("admin"):
        raise Forbidden("only the admin may change settings")
    unknown = sorted(set(changes) - set(Settings.model_fields))
    if unknown:
        raise ValidationFailed(f"unknown setting(s): {', '.join(unknown)}", [{"field": n} for n in unknown])
    fixed = sorted(set(changes) - MUTABLE_FIELDS)
    if fixed:
        raise ValidationFailed(f"cannot change {', '.join(fixed)} while running; use the config file or flags",
                               [{"field": n} for n in fixed])
    changes = {k: v for k, v in changes.items() if not (k in SECRET_FIELDS and v == MASK)}
    try:
        candidate = Settings(**{**svc.settings.model_dump(), **changes})
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise ValidationFailed("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors) from exc
    write_config_file(svc.settings.home, {k: getattr(candidate, k) for k in changes})
    for key in changes:
        setattr(svc.settings, key, getattr(candidate, key))
    audit(request, "settings.update", None, {k: (MASK if k in SECRET_FIELDS else getattr(candidate, k))
                                             for k in sorted(changes)})
    return public_view(svc.settings)
