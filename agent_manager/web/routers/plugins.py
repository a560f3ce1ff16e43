"""/api/backends and /api/kinds: the registry (plugins.py) as the UI and scripts see it.

Every list of backends or kinds a client shows comes from here, so a plugin installed with
pip appears everywhere at the next start. A plugin that failed to load is listed too, as
unavailable with the reason, so an install problem is visible rather than silent.
"""

from __future__ import annotations

import asyncio
import shutil

from fastapi import APIRouter, Depends

from agent_manager import plugins
from agent_manager.models import BackendInfo, KindInfo
from agent_manager.service import Service
from agent_manager.web.deps import service

router = APIRouter(prefix="/api", tags=["plugins"])
AVAILABILITY_TIMEOUT_S = 5.0


async def _availability(svc: Service, name: str) -> tuple[bool, str]:
    plugin = plugins.backends()[name]
    if plugin.setup_problem is not None and (problem := plugin.setup_problem(svc.settings)):
        return False, problem
    executor = svc.executors.get(name)
    if executor is None:
        return False, svc.backend_problems.get(name, "not started")
    try:
        found = await asyncio.wait_for(executor.available(), AVAILABILITY_TIMEOUT_S)
    except TimeoutError:
        return False, f"its availability check did not answer within {AVAILABILITY_TIMEOUT_S:g}s"
    except Exception as exc:  # a plugin's bug must not break the listing
        return False, f"its availability check failed: {type(exc).__name__}: {exc}"
    return found.ok, "" if found.ok else found.reason


@router.get("/backends", response_model=list[BackendInfo])
async def list_backends(svc: Service = Depends(service)) -> list[BackendInfo]:
    """Installed backends in the order of the UI's choices, each available or not and why."""
    entries = plugins.backend_entries()
    loaded = [e.name for e in entries if e.error is None]
    checks = dict(zip(loaded, await asyncio.gather(*(_availability(svc, n) for n in loaded)), strict=True))
    found = []
    for entry in entries:
        plugin: plugins.BackendPlugin | None = entry.plugin
        ok, reason = checks[entry.name] if entry.error is None else (False, entry.error)
        reason = svc.settings.scrub(reason)  # a plugin's or SDK's message may carry its own key
        found.append(BackendInfo(
            name=entry.name, title=plugin.title if plugin else entry.name,
            description=plugin.description if plugin else "", available=ok, reason=reason,
            capabilities=sorted(plugin.capabilities) if plugin else [],
            settings_section=entry.name if plugin is not None and plugin.settings_model is not None else None,
            builtin=entry.builtin, plugin=entry.distribution, loaded=entry.error is None))
    return found


@router.get("/kinds", response_model=list[KindInfo])
async def list_kinds() -> list[KindInfo]:
    """Installed agent kinds, built-ins first (``generic`` runs any program)."""
    found = []
    for entry in plugins.kind_entries():
        kind = entry.plugin
        if kind is None:
            found.append(KindInfo(name=entry.name, title=entry.name, description=entry.error or "",
                                  default_command="", install_hint="", supports_resume=False, available=False,
                                  builtin=entry.builtin, plugin=entry.distribution, loaded=False,
                                  default=False))
            continue
        command = kind.default_command
        found.append(KindInfo(name=entry.name, title=kind.title or entry.name, description=kind.description,
                              default_command=command, install_hint=kind.install_hint,
                              supports_resume=kind.supports_resume,
                              available=shutil.which(command) is not None if command else None,
                              builtin=entry.builtin, plugin=entry.distribution, loaded=True,
                              default=entry.name == plugins.DEFAULT_KIND))
    return found
