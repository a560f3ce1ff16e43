"""GET /metrics: the service's Prometheus registry (``agent_manager.metrics``) in the text format."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from agent_manager.service import Service
from agent_manager.web import responses as api
from agent_manager.web.deps import service

router = APIRouter(tags=["service"])


@router.get("/metrics", response_class=Response, responses=api.PROMETHEUS)
async def metrics(svc: Service = Depends(service)) -> Response:
    return Response(svc.runs.metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
