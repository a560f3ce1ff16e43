"""Request-scoped access to the service and the caller."""

from __future__ import annotations

from typing import Any

from fastapi import Request

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
