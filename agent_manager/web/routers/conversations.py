"""/api/conversations: multi-turn chats whose turns are runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from agent_manager.errors import ValidationFailed
from agent_manager.models import NO_NUL, Conversation, ConversationCreate, MessageCreate, MessagePosted
from agent_manager.service import Service
from agent_manager.store import agents as agent_store
from agent_manager.store import conversations as conv_store
from agent_manager.web import responses as api
from agent_manager.web.deps import owner_filter, principal, service
from agent_manager.workspaces import records as rec

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


@router.get("", response_model=list[Conversation])
async def list_conversations(request: Request, q: str | None = Query(None, max_length=500, pattern=NO_NUL),
                       limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
                       svc: Service = Depends(service)) -> list[dict[str, Any]]:
    return await svc.database.read(conv_store.search, q, owner_filter(request), limit, offset)


@router.post("", response_model=Conversation, status_code=201, responses=api.errors(404, 409, 422))
async def create_conversation(body: ConversationCreate, request: Request,
                        svc: Service = Depends(service)) -> dict[str, Any]:
    agent_id = agent_store.get(svc.database, body.agent)["id"] if body.agent else None
    if body.base and not body.project:
        raise ValidationFailed("base: only with a project", [{"field": "base", "message": "needs project"}])
    base = await svc.workspaces.check_base(body.project, body.base) if body.project else None
    owner = principal(request).get("id")
    conv = conv_store.create(svc.database, body.title, agent_id, owner)
    if base is not None:  # one branch, am/<conversation id>, for every turn
        ws = svc.workspaces.record(base, "conversation", conv["id"], owner)
        rec.link(svc.database, "conversations", conv["id"], ws["id"])
        conv = conv_store.get(svc.database, conv["id"])
    return rec.attach(svc.database, conv)


@router.get("/{conv_id}", response_model=Conversation, responses=api.errors(404))
async def get_conversation(conv_id: str, request: Request, svc: Service = Depends(service)) -> dict[str, Any]:
    conv = conv_store.get(svc.database, conv_id, owner_filter(request))
    return rec.attach(svc.database, {**conv, "messages": conv_store.messages(svc.database, conv_id)})


@router.post("/{conv_id}/messages", response_model=MessagePosted, status_code=201,
             responses=api.errors(403, 404, 409, 413, 422, 503))
async def post_message(conv_id: str, body: MessageCreate, request: Request,
                 svc: Service = Depends(service)) -> dict[str, Any]:
    conv = conv_store.get(svc.database, conv_id, owner_filter(request))
    agent_ref = body.agent or conv["agent_id"]
    if not agent_ref:
        raise ValidationFailed("agent: this conversation has no agent yet; name one",
                               [{"field": "agent", "message": "required"}])
    run = svc.start_run(principal(request), agent_ref, body.content, conversation_id=conv_id,
                        backend=body.backend, workspace_id=conv.get("workspace_id"))
    messages = conv_store.messages(svc.database, conv_id)
    user_message = next(m for m in reversed(messages) if m["run_id"] == run["id"] and m["role"] == "user")
    return {"message": user_message, "run": rec.attach(svc.database, run)}
