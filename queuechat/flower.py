"""Flower, counting every model queue of the models file.

Flower's broker view lists the queues of the workers it has seen; a queue whose workers are all
gone (tasks waiting for the next one) would vanish from it.  `count_every_model_queue()` makes it
list every model.  `queuechat flower` applies it before starting Flower (a plain
`celery -A workers flower` shows the queues of the workers Flower has seen).

Through Sentinel, Flower's broker view makes its own Redis client from the broker URL's first
Sentinel only; `ask_every_sentinel()` (also applied by `queuechat flower`) has it take QueueChat's
client instead (protocol/redis_clients.py), which asks every Sentinel.
"""

from __future__ import annotations

from typing import Any

from protocol.models_file import ModelsFileError, load_models_file
from protocol.settings import QueueSettings


def count_every_model_queue() -> None:
    from flower.views import BaseHandler

    try:
        models = load_models_file(QueueSettings().models_file).names
    except ModelsFileError:
        return  # Flower still runs; it shows the queues of the workers it sees
    seen_by_flower = BaseHandler.get_active_queue_names
    if getattr(seen_by_flower, "counts_every_model", False):
        return

    def every_model_queue(self: BaseHandler) -> list[str]:
        return sorted(set(seen_by_flower(self)) | set(models))

    every_model_queue.counts_every_model = True  # type: ignore[attr-defined]
    BaseHandler.get_active_queue_names = every_model_queue  # type: ignore[method-assign]


def ask_every_sentinel(settings: QueueSettings | None = None) -> None:
    """Flower's broker view (queue lengths) reaches Redis with QueueChat's client, through every
    Sentinel; still failing fast (no retry, Flower's socket timeouts) when Redis is away."""
    from flower.utils.broker import RedisSentinel
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from protocol.redis_clients import async_client

    settings = settings or QueueSettings()
    if not settings.redis_sentinels:
        return

    def queuechat_client(self: RedisSentinel, *_: Any) -> Any:
        return async_client(settings, socket_connect_timeout=self.socket_connect_timeout,
                            socket_timeout=self.socket_timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip

    RedisSentinel._get_redis_client = queuechat_client  # type: ignore[method-assign]


def run(argv: list[str]) -> None:
    from workers.celery import app

    count_every_model_queue()
    ask_every_sentinel()
    app.start(["flower", *argv])
