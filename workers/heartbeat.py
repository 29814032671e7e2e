"""A running worker's state and its heartbeat: who serves which model, with what capacity and
what the model can do (its card), scored with Redis' clock."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

import redis

from protocol import (
    MODELS_SEEN_KEY,
    ModelFailure,
    cards_key,
    failures_key,
    live_workers_key,
    slots_key,
    stats_key,
)
from workers.cancels import CANCEL_POLL_SECONDS, CancelWatch
from workers.contract import Engine
from workers.publisher import Outbox
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _said_before(raw: bytes, when: float) -> bool:
    """A failure record last refreshed before `when` (or unreadable): its worker is long gone."""
    try:
        return ModelFailure.model_validate_json(raw).at < when
    except ValueError:
        return True


@dataclass
class WorkerState:
    """Everything a running worker holds: its id, Redis client and one engine per model."""

    worker_id: str
    settings: WorkerSettings
    redis: redis.Redis
    engines: dict[str, Engine]
    outbox: Outbox
    failures: dict[str, str] = field(default_factory=dict)  # model -> why it could not be loaded
    _stop: threading.Event = field(default_factory=threading.Event)
    cancels: CancelWatch = field(init=False)  # whose clients left, for every running request

    def __post_init__(self) -> None:
        self.cancels = CancelWatch(self.redis, CANCEL_POLL_SECONDS)

    def beat(self) -> None:
        """Announce every model this worker serves, scored with Redis' clock (the gateway reads the
        same clock, so hosts with skewed clocks still agree on who is alive)."""
        seconds, micros = self.redis.time()
        now = seconds + micros / 1e6
        forgotten = now - 10 * self.settings.heartbeat_ttl  # long dead (killed, not withdrawn): tidy up
        pipe = self.redis.pipeline(transaction=False)
        for model in self.engines:
            pipe.zrangebyscore(live_workers_key(model), "-inf", forgotten)
        for model in self.failures:
            pipe.hgetall(failures_key(model))
        replies = pipe.execute()
        dead = dict(zip(self.engines, replies))
        for model, failed in zip(self.failures, replies[len(self.engines):]):
            pipe.hset(failures_key(model), self.worker_id, ModelFailure(reason=self.failures[model], at=now).model_dump_json())
            others = {w: raw for w, raw in failed.items() if _text(w) != self.worker_id}
            if stale := [w for w, raw in others.items() if _said_before(raw, forgotten)]:
                pipe.hdel(failures_key(model), *stale)
            pipe.sadd(MODELS_SEEN_KEY, model)
        for model, engine in self.engines.items():
            pipe.zadd(live_workers_key(model), {self.worker_id: now})
            pipe.hset(slots_key(model), self.worker_id, f"{engine.free_slots}/{engine.slots}")
            pipe.hset(stats_key(model), self.worker_id, json.dumps(engine.stats()))
            pipe.hset(cards_key(model), self.worker_id, engine.card().model_dump_json())
            pipe.hdel(failures_key(model), self.worker_id)  # loaded now, whatever an earlier run said
            if dead[model]:
                pipe.zrem(live_workers_key(model), *dead[model])
                for key in (slots_key(model), stats_key(model), cards_key(model)):
                    pipe.hdel(key, *dead[model])
            pipe.sadd(MODELS_SEEN_KEY, model)
        pipe.execute()

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def start_heartbeat(self) -> None:
        self.beat()
        threading.Thread(target=self._beat_forever, name="queuechat-heartbeat", daemon=True).start()

    def withdraw(self) -> None:
        """Stop heartbeating, remove this worker from the live sets at once, stop the engines."""
        self._stop.set()
        for engine in self.engines.values():
            engine.close()
        try:
            for model in self.engines:
                self.redis.zrem(live_workers_key(model), self.worker_id)
                for key in (slots_key(model), stats_key(model), cards_key(model)):
                    self.redis.hdel(key, self.worker_id)
            for model in self.failures:
                self.redis.hdel(failures_key(model), self.worker_id)
        except redis.RedisError as exc:
            log.warning("could not withdraw from the registry: %s", exc)
