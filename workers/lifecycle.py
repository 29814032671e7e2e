"""Worker start-up and shutdown, as Celery signal handlers: size the pool, load the models of
the consumed queues, heartbeat, withdraw.

Connected when the worker imports `workers.tasks`.
"""

from __future__ import annotations

import logging

import redis
from celery import signals

from adapters import ModelLoadError
from protocol import load_models_file
from workers.celery import QueueChatCelery
from workers.engines import WorkerStartupError, load_engines, pool_slots
from workers.heartbeat import WorkerState
from workers.publisher import Outbox

log = logging.getLogger(__name__)


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
