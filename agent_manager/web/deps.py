"""Request-scoped access to the service and the caller."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from agent_manager.errors import Forbidden
from agent_manager.service import Service


async def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def principal(request: Request) -> dict[str, Any]:
    found: dict[str, Any] | None = getattr(request.state, "principal", None)
    return found or {"id": None, "name": "admin", "admin": True, "trusted": True}


def owner_filter(request: Request) -> str | None:
    """None for the admin (sees everything); the user's id otherwise."""
    who = principal(request)
    return None if who.get("admin") else who.get("id")


def require_admin(request: Request) -> None:
    """The one admin check: a route dependency (``dependencies=[Depends(require_admin)]``) on every
    admin-only operation, so each refuses with the same 403 before it reads anything."""
    if not principal(request).get("admin"):
        raise Forbidden("only the admin may do this")


def require_trusted(request: Request) -> None:
    """The check for writing, moving and deleting files in agents' working directories: the admin
    and trusted users only (an untrusted user may run agents, always isolated, but not place
    files on this host; docs/security.md)."""
    who = principal(request)
    if not (who.get("admin") or who.get("trusted")):
        raise Forbidden("only the admin and trusted users may change files")


def audit(request: Request, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
    """Append who did what to the audit log (never pass secret values in ``details``)."""
    from agent_manager.store import users as user_store

    who = principal(request)
    svc: Service = request.app.state.service
    user_store.record(svc.database, str(who.get("name") or who.get("id") or "?"), action, target,
                      {**(details or {}), **({"actor_id": who["id"]} if who.get("id") else {})})
