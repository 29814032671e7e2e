"""GET /v1/models and /v1/models/{id}: models that a live worker serves right now."""

from typing import Any

from fastapi import APIRouter

from gateway.deps import RegistryDep
from gateway.registry import Registry

router = APIRouter()

_CREATED = 1_700_000_000  # a fixed timestamp: models here have no creation date


def _model(registry: Registry, model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _CREATED, "owned_by": registry.owned_by(model)}


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {"object": "list", "data": [_model(registry, m) for m in await registry.live_models()]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, registry: RegistryDep) -> dict[str, Any]:
    await registry.require_live(model)
    return _model(registry, model)
