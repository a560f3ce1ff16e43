"""/api/users and /api/audit: the admin manages users and reads who changed what.

A user's token is returned once, by create and by rotate; only its hash is stored.
``GET /api/users/me`` is open to every authenticated caller so the UI knows who it is.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from agent_manager.errors import Conflict, Forbidden, ValidationFailed
from agent_manager.models import NAME_RE, Strict
from agent_manager.service import Service
from agent_manager.store import users as user_store
from agent_manager.web import auth, revocation
from agent_manager.web import responses as api
from agent_manager.web.deps import audit, principal, require_admin, service

router = APIRouter(tags=["users"])
RESERVED_NAMES = frozenset({"admin", "me"})


class UserCreate(Strict):
    name: str = Field(..., pattern=NAME_RE)
    trusted: bool = False
    admin: bool = False


class UserUpdate(Strict):
    name: str | None = Field(None, pattern=NAME_RE)
    trusted: bool | None = None
    admin: bool | None = None


def _check_name(name: str | None) -> None:
    if name is not None and name.lower() in RESERVED_NAMES:
        raise ValidationFailed(f"name: {name!r} is reserved", [{"field": "name", "message": "reserved"}])


@router.get("/api/users/me", response_model=api.Me)
async def me(request: Request) -> dict[str, Any]:
    who = principal(request)
    return {"id": who.get("id"), "name": who.get("name", "?"), "admin": bool(who.get("admin")),
            "trusted": bool(who.get("trusted"))}


@router.get("/api/users", response_model=list[api.User], dependencies=[Depends(require_admin)],
            responses=api.errors(403))
async def list_users(svc: Service = Depends(service)) -> list[dict[str, Any]]:
    return user_store.list_all(svc.database)


@router.post("/api/users", response_model=api.UserWithToken, status_code=201, dependencies=[Depends(require_admin)],
             responses=api.errors(403, 409, 422))
async def create_user(body: UserCreate, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    _check_name(body.name)
    user, token = user_store.create(svc.database, body.name, trusted=body.trusted, admin=body.admin)
    audit(request, "user.create", user["id"], {"name": user["name"], "trusted": user["trusted"],
                                               "admin": user["admin"]})
    return {**user, "token": token}


@router.get("/api/users/{user_id}", response_model=api.User, dependencies=[Depends(require_admin)],
            responses=api.errors(403, 404))
async def get_user(user_id: str, svc: Service = Depends(service)) -> dict[str, Any]:
    return user_store.get(svc.database, user_id)


@router.patch("/api/users/{user_id}", response_model=api.User, dependencies=[Depends(require_admin)],
              responses=api.errors(403, 404, 409, 422))
async def update_user(user_id: str, body: UserUpdate, request: Request,
                      svc: Service = Depends(service)) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    for key, value in changes.items():
        if value is None:
            raise ValidationFailed(f"{key}: must not be null", [{"field": key, "message": "must not be null"}])
    _check_name(changes.get("name"))
    user = user_store.update(svc.database, user_id, changes)
    revocation.changed(request.app)  # a demoted or distrusted user's open terminals end
    audit(request, "user.update", user["id"], changes)
    return user


@router.delete("/api/users/{user_id}", status_code=204, dependencies=[Depends(require_admin)],
               responses=api.errors(403, 404))
async def delete_user(user_id: str, request: Request, svc: Service = Depends(service)) -> Response:
    user = user_store.delete(svc.database, user_id)
    revocation.changed(request.app)
    audit(request, "user.delete", user["id"], {"name": user["name"]})
    return Response(status_code=204)


@router.post("/api/users/{user_id}/token", response_model=api.UserWithToken, dependencies=[Depends(require_admin)],
             responses=api.errors(403, 404))
async def rotate_token(user_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    user, token = user_store.rotate_token(svc.database, user_id)
    revocation.changed(request.app)
    audit(request, "user.token_rotate", user["id"], {"name": user["name"]})
    return {**user, "token": token}


# Out of /openapi.json: an API fuzzer or a generated client walking the schema with the admin
# token would otherwise replace the token it is using (docs/api.md has it).
@router.post("/api/token/rotate", response_model=api.AdminToken, include_in_schema=False,
             responses=api.errors(403, 409))
async def rotate_admin_token(request: Request, response: Response) -> dict[str, Any]:
    """Replace the admin token; the old one, and every admin session, stop working at once.
    Only the holder of the admin token may do it (not a user who is an admin)."""
    if request.app.state.token is None:
        raise Conflict("authentication is off: there is no admin token to rotate")
    if principal(request).get("id") is not None:
        raise Forbidden("only the holder of the admin token may rotate it")
    token = auth.rotate_admin_token(request.app)
    audit(request, "admin.token_rotate", None)
    response.headers["Cache-Control"] = "no-store"
    return {"token": token}


@router.get("/api/audit", response_model=api.AuditPage, dependencies=[Depends(require_admin)],
            responses=api.errors(403))
async def audit_log(actor: str | None = Query(None, max_length=200), action: str | None = Query(None, max_length=200),
                    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=2**62),
                    svc: Service = Depends(service)) -> dict[str, Any]:
    items, total = user_store.audit_entries(svc.database, actor=actor, action=action, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}
