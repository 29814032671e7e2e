"""Which models exist and which have a live worker, read from the workers' heartbeats in Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from pydantic import ValidationError
from redis.asyncio import Redis

from gateway.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from protocol import (
    MODELS_SEEN_KEY,
    Capability,
    Feature,
    ModelCard,
    ModelFailure,
    ModelsFile,
    cards_key,
    failures_key,
    live_workers_key,
)

_NAMES = {"chat": "chat completions", "completions": "completions", "embeddings": "embeddings",
          "classify": "classification", "score": "scoring or reranking"}


class Registry:
    """Known models = the models file plus any model a worker announced; live = heartbeat within TTL."""

    def __init__(self, redis: Redis, models: ModelsFile, heartbeat_ttl: float, fresh: float = 0.25) -> None:
        self._redis = redis
        self._models = models
        self._ttl = heartbeat_ttl
        self._fresh = fresh  # seconds one reading of a model's heartbeats serves every open stream
        self._readings: dict[str, tuple[float, asyncio.Future[dict[str, bool]]]] = {}

    async def _now(self) -> float:
        seconds, micros = await self._redis.time()  # Redis' clock, shared by every host
        return seconds + micros / 1e6

    async def live_workers(self, model: str) -> list[str]:
        since = await self._now() - self._ttl
        members = await self._redis.zrangebyscore(live_workers_key(model), since, "+inf")
        return [_text(m) for m in members]

    async def is_alive(self, model: str, worker: str) -> bool:
        score = await self._redis.zscore(live_workers_key(model), worker)
        return score is not None and score >= await self._now() - self._ttl

    async def liveness(self, model: str) -> dict[str, bool]:
        """Worker -> whether its heartbeat for `model` is recent: one reading shared by every
        caller within `fresh` seconds (thousands of waiting streams ask once a second each)."""
        now = time.monotonic()
        taken = self._readings.get(model)
        if taken is None or now - taken[0] > self._fresh or (taken[1].done() and taken[1].exception()):
            taken = self._readings[model] = (now, asyncio.ensure_future(self._read_liveness(model)))
        return await asyncio.shield(taken[1])

    async def _read_liveness(self, model: str) -> dict[str, bool]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(live_workers_key(model), 0, -1, withscores=True)
        (seconds, micros), members = await pipe.execute()
        since = seconds + micros / 1e6 - self._ttl
        return {_text(worker): score >= since for worker, score in members}

    async def known_models(self) -> list[str]:
        announced = {_text(m) for m in await self._redis.smembers(MODELS_SEEN_KEY)}
        return sorted(announced | set(self._models.names))

    async def live_map(self) -> dict[str, list[str]]:
        """Every known model -> its live workers, read with one clock reading and one round trip."""
        models = await self.known_models()
        since = await self._now() - self._ttl
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.zrangebyscore(live_workers_key(model), since, "+inf")
        replies = await pipe.execute()
        return {m: [_text(w) for w in ws] for m, ws in zip(models, replies)}

    async def live_models(self) -> list[str]:
        return [m for m, workers in (await self.live_map()).items() if workers]

    async def cards(self, live: dict[str, list[str]]) -> dict[str, ModelCard | None]:
        """What each model can do, merged over the cards of its live workers (None: no card yet)."""
        models = [m for m, workers in live.items() if workers]
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.hmget(cards_key(model), live[model])
        return {model: _merged(cards) for model, cards in zip(models, await pipe.execute())}

    async def require_live(self, model: str, capability: Capability | None = None,
                           features: Mapping[Feature, str] | None = None) -> None:  # fmt: skip
        """Raise 404 for a model nobody knows, 503 for a known model that no live worker serves,
        400 (naming `model`) when its live workers say it cannot do `capability`, and 400 naming
        the parameter when one of them cannot give one of `features` (feature -> parameter)."""
        since = await self._now() - self._ttl
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrangebyscore(live_workers_key(model), since, "+inf")
        pipe.hgetall(cards_key(model))
        workers, cards = await pipe.execute()
        if workers:
            card = _merged([cards.get(w) for w in workers])
            if capability is not None and card is not None and not card.can(capability):
                raise InvalidRequest(f"Model '{model}' does not support {_NAMES[capability]}; it serves "
                                     f"{', '.join(_NAMES[c] for c in card.capabilities)}.", param="model",
                                     code="model_not_supported")  # fmt: skip
            refused = next((p for f, p in (features or {}).items() if card is not None and f in card.unsupported), None)
            if refused is not None and card is not None:
                raise InvalidRequest(f"'{refused}' is not supported by model '{model}' (engine {card.engine}).",
                                     param=refused, code="unsupported_parameter")  # fmt: skip
            return
        if model not in await self.known_models():
            raise ModelNotFound(model)
        raise await self.unavailable(model)

    async def failures(self, model: str) -> dict[str, str]:
        """Worker -> why it could not load `model`, from workers heartbeating right now."""
        return (await self.failed_map([model])).get(model, {})

    async def failed_map(self, models: list[str] | None = None) -> dict[str, dict[str, str]]:
        """Model -> {worker: why it could not load the model}, for models (default: every known one)
        that a worker heartbeating right now failed to load."""
        models = await self.known_models() if models is None else models
        since = await self._now() - self._ttl
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(failures_key(model))
        found: dict[str, dict[str, str]] = {}
        for model, raw in zip(models, await pipe.execute()):
            for worker, record in raw.items():
                try:
                    failure = ModelFailure.model_validate_json(record)
                except ValidationError:
                    continue
                if failure.at >= since:
                    found.setdefault(model, {})[_text(worker)] = failure.reason
        return found

    async def unavailable(self, model: str, what: str = "right now") -> ServiceUnavailable:
        """The 503 for a model no live worker serves: why it failed to load, when a worker says so."""
        failures = await self.failures(model)
        if failures:
            worker, reason = sorted(failures.items())[0]
            return ServiceUnavailable(f"Model '{model}' failed to load on worker {worker}: {reason}",
                                      code="model_failed")  # fmt: skip
        return ServiceUnavailable(f"No worker is serving model '{model}' {what}; start one with "
                                  f"`celery -A workers worker -Q {model}`.", code="model_unavailable")  # fmt: skip

    def metric_label(self, model: str) -> str:
        """The model as a metrics label: names outside the models file (an unbounded set) are "other"."""
        return model if self._models.get(model) is not None else "other"

    def owned_by(self, model: str) -> str:
        spec = self._models.get(model)
        return spec.owned_by if spec else "queuechat"


def _merged(raw_cards: list[bytes | str | None]) -> ModelCard | None:
    """One card for a model from its workers' cards: every capability any of them has, the
    smallest context length (what every worker can take).  None when no worker sent one."""
    cards = []
    for raw in raw_cards:
        if not raw:
            continue
        try:
            cards.append(ModelCard.model_validate_json(raw))
        except ValidationError:
            continue  # a newer or broken worker: it still serves, it just says nothing here
    if not cards:
        return None
    capabilities = tuple(dict.fromkeys(c for card in cards for c in card.capabilities))
    lengths = [card.max_model_len for card in cards if card.max_model_len is not None]
    # A request may land on any of the workers: what one cannot give, the model cannot.
    unsupported = tuple(dict.fromkeys(f for card in cards for f in card.unsupported))
    engines = "/".join(dict.fromkeys(card.engine for card in cards if card.engine)) or None
    return ModelCard(capabilities=capabilities, max_model_len=min(lengths) if lengths else None, engine=engines,
                     unsupported=unsupported)  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
