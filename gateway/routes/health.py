"""GET /health: 200 while Redis answers, 503 otherwise."""

from typing import Any

import redis.exceptions
from fastapi import APIRouter, Request

from gateway.errors import ServiceUnavailable

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    try:
        await request.app.state.redis.ping()
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(f"Redis is unreachable: {exc}", code="queue_unavailable") from exc
    return {"status": "ok"}
