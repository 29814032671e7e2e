"""A running worker's state and its heartbeat: who serves which model, with what capacity and
what the model can do (its card), scored with Redis' clock."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

import redis

from protocol import MODELS_SEEN_KEY, cards_key, live_workers_key, slots_key, stats_key
from workers.contract import Engine
from workers.publisher import Outbox
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """Everything a running worker holds: its id, Redis client and one engine per model."""

    worker_id: str
    settings: WorkerSettings
    redis: redis.Redis
    engines: dict[str, Engine]
    outbox: Outbox
    _stop: threading.Event = field(default_factory=threading.Event)

    def beat(self) -> None:
        """Announce every model this worker serves, scored with Redis' clock (the gateway reads the
        same clock, so hosts with skewed clocks still agree on who is alive)."""
        seconds, micros = self.redis.time()
        now = seconds + micros / 1e6
        forgotten = now - 10 * self.settings.heartbeat_ttl  # long dead (killed, not withdrawn): tidy up
        pipe = self.redis.pipeline(transaction=False)
        for model in self.engines:
            pipe.zrangebyscore(live_workers_key(model), "-inf", forgotten)
        dead = dict(zip(self.engines, pipe.execute()))
        for model, engine in self.engines.items():
            pipe.zadd(live_workers_key(model), {self.worker_id: now})
            pipe.hset(slots_key(model), self.worker_id, f"{engine.free_slots}/{engine.slots}")
            pipe.hset(stats_key(model), self.worker_id, json.dumps(engine.stats()))
            pipe.hset(cards_key(model), self.worker_id, engine.card().model_dump_json())
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
        except redis.RedisError as exc:
            log.warning("could not withdraw from the registry: %s", exc)
