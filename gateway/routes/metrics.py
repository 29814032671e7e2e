"""GET /metrics: Prometheus text format (open like /health; see README, Operations)."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import RegistryDep

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request, registry: RegistryDep) -> Response:
    collected = request.app.state.metrics
    await collected.refresh(request.app.state.redis, await registry.live_map(), await registry.failed_map())
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
