"""Which models exist and which have a live worker, read from the workers' heartbeats in Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from gateway.errors import ModelNotFound, ServiceUnavailable
from protocol.models_file import ModelsFile
from protocol import MODELS_SEEN_KEY, live_workers_key


class Registry:
    """Known models = the models file plus any model a worker announced; live = heartbeat within TTL."""

    def __init__(self, redis: Redis, models: ModelsFile, heartbeat_ttl: float) -> None:
        self._redis = redis
        self._models = models
        self._ttl = heartbeat_ttl

    async def _now(self) -> float:
        seconds, micros = await self._redis.time()  # Redis' clock, shared by every host
        return seconds + micros / 1e6

    async def live_workers(self, model: str) -> list[str]:
        since = await self._now() - self._ttl
        members = await self._redis.zrangebyscore(live_workers_key(model), since, "+inf")
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    async def is_alive(self, model: str, worker: str) -> bool:
        score = await self._redis.zscore(live_workers_key(model), worker)
        return score is not None and score >= await self._now() - self._ttl

    async def known_models(self) -> list[str]:
        announced = {m.decode() if isinstance(m, bytes) else m for m in await self._redis.smembers(MODELS_SEEN_KEY)}
        return sorted(announced | set(self._models.names))

    async def live_map(self) -> dict[str, list[str]]:
        """Every known model -> its live workers, read with one clock reading and one round trip."""
        models = await self.known_models()
        since = await self._now() - self._ttl
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.zrangebyscore(live_workers_key(model), since, "+inf")
        replies = await pipe.execute()
        return {m: [w.decode() if isinstance(w, bytes) else w for w in ws] for m, ws in zip(models, replies)}

    async def live_models(self) -> list[str]:
        return [m for m, workers in (await self.live_map()).items() if workers]

    async def require_live(self, model: str) -> None:
        """Raise 404 for a model nobody knows, 503 for a known model that no live worker serves."""
        if await self.live_workers(model):
            return
        if model not in await self.known_models():
            raise ModelNotFound(model)
        raise ServiceUnavailable(
            f"No worker is serving model '{model}' right now; start one with "
            f"`celery -A workers worker -Q {model}`.",
            code="model_unavailable",
        )

    def configured(self, model: str) -> bool:
        """In the models file (a bounded set: safe as a metrics label)."""
        return self._models.get(model) is not None

    def owned_by(self, model: str) -> str:
        spec = self._models.get(model)
        return spec.owned_by if spec else "queuechat"
