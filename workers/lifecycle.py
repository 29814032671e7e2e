"""Worker start-up and shutdown: load the models of the consumed queues, then heartbeat.

Connected to Celery's signals when the worker imports `workers.tasks`.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Union

import redis
from celery import signals

from adapters import ModelLoadError, adapter_for
from workers.celery import QueueChatCelery
from workers.embed_engine import EmbeddingEngine
from workers.engine import Engine
from protocol.models_file import ModelSpec, load_models_file
from protocol import MODELS_SEEN_KEY, live_workers_key, slots_key, stats_key
from workers.publisher import Outbox
from workers.serial_engine import SerialEngine
from workers.settings import WorkerSettings

AnyEngine = Union[Engine, SerialEngine, EmbeddingEngine]

log = logging.getLogger(__name__)


class WorkerStartupError(RuntimeError):
    pass


@dataclass
class WorkerState:
    """Everything a running worker holds: its id, Redis client and one engine per model."""

    worker_id: str
    settings: WorkerSettings
    redis: redis.Redis
    engines: dict[str, AnyEngine]
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
            if dead[model]:
                pipe.zrem(live_workers_key(model), *dead[model])
                pipe.hdel(slots_key(model), *dead[model])
                pipe.hdel(stats_key(model), *dead[model])
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
                self.redis.hdel(slots_key(model), self.worker_id)
                self.redis.hdel(stats_key(model), self.worker_id)
        except redis.RedisError as exc:
            log.warning("could not withdraw from the registry: %s", exc)


def load_engines(settings: WorkerSettings, queues: list[str], outbox: Outbox) -> dict[str, AnyEngine]:
    models = load_models_file(settings.models_file)
    served = [q for q in queues if models.get(q)]
    for queue in queues:
        if queue not in served:
            log.warning("queue %r names no model in %s; its tasks will fail", queue, settings.models_file)
    if not served:
        raise WorkerStartupError(
            f"this worker consumes no model queue; start it with -Q <model> "
            f"(models in {settings.models_file}: {', '.join(models.names)})"
        )
    engines = {}
    for name in served:
        spec = models.models[name]
        adapter = adapter_for(spec)(spec, settings.cache_dir)
        log.info("loading model %s (adapter %s) from %s", name, adapter.name, spec.path)
        adapter.load()
        engines[name] = make_engine(adapter, spec, outbox, settings.keepalive_interval)
        log.info("model %s serves up to %d requests together", name, engines[name].slots)
    return engines


def make_engine(adapter: Any, spec: ModelSpec, outbox: Outbox, keepalive: float = 5.0) -> AnyEngine:
    """Batched decoding for logit-producing adapters, one at a time for text-producing ones
    (remote-code ChatGLM), the embedding engine for encoders."""
    if adapter.kind == "text":
        return SerialEngine(adapter, on_step_end=outbox.flush, keepalive=keepalive)
    if adapter.kind == "embed":
        return EmbeddingEngine(adapter, slots=spec.slots)
    return Engine(adapter, slots=spec.slots, on_step_end=outbox.flush, keepalive=keepalive)


def pool_slots(spec: ModelSpec) -> int:
    """Task threads a model needs: its slots, or one for adapters that run one request at a time."""
    try:
        return 1 if adapter_for(spec).kind == "text" else spec.slots
    except ModelLoadError:
        return spec.slots  # reported when the worker loads its models


@signals.worker_init.connect
def _size_the_pool(sender: object, **_: object) -> None:
    """One pool thread per batch slot of the served models (unless -c says otherwise): with
    prefetch 1 and late acks, the worker then holds exactly as many tasks as it can decode, and
    the rest of the backlog waits, visible, in Redis.  Runs after -Q is applied, before the pool
    is created."""
    app = getattr(sender, "app", None)
    if not isinstance(app, QueueChatCelery) or getattr(sender, "concurrency", None) != "auto":
        return  # -c (or worker_concurrency) chose a number
    sender.concurrency = 1  # type: ignore[attr-defined]  # when no model queue is served (reported later)
    try:
        models = load_models_file(app.settings.models_file)
    except ValueError:
        return  # reported with more context once the worker loads its models
    queues = app.amqp.queues.consume_from or []
    slots = sum(pool_slots(spec) for name in queues if (spec := models.get(name)))
    sender.concurrency = max(1, slots)  # type: ignore[attr-defined]


@signals.celeryd_after_setup.connect
def _load_models(sender: str, instance: object, **_: object) -> None:
    """Runs once -Q is applied and logging is set up, before the consumer takes any task."""
    app = getattr(instance, "app", None)
    if not isinstance(app, QueueChatCelery):
        return
    queues = sorted(app.amqp.queues.consume_from or [])  # the -Q queues
    client = redis.Redis.from_url(app.settings.redis_url)
    outbox = Outbox(client)
    try:
        engines = load_engines(app.settings, queues, outbox)
    except (ModelLoadError, WorkerStartupError, ValueError, OSError) as exc:
        log.critical("worker cannot start: %s", exc)
        raise SystemExit(2) from exc
    app.state = WorkerState(sender, app.settings, client, engines, outbox)


@signals.worker_ready.connect
def _announce(sender: object, **_: object) -> None:
    app = getattr(sender, "app", None)
    if isinstance(app, QueueChatCelery) and app.state is not None:
        app.state.start_heartbeat()
        log.info("serving %s as %s", ", ".join(app.state.engines), app.state.worker_id)


@signals.worker_shutdown.connect
def _withdraw(sender: object, **_: object) -> None:
    app = getattr(sender, "app", None)
    if isinstance(app, QueueChatCelery) and app.state is not None:
        app.state.withdraw()
