"""Worker start-up and shutdown, as Celery signal handlers: size the pool, load the models of
the consumed queues, heartbeat, withdraw.

Connected when the worker imports `workers.tasks`.
"""

from __future__ import annotations

import logging

from celery import signals

from protocol import load_models_file
from protocol.redis_clients import sync_client
from workers.celery import QueueChatCelery
from workers.engines import load_engines, pool_slots, with_engine
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
    slots = sum(pool_slots(with_engine(spec, app.settings)) for name in queues if (spec := models.get(name)))
    sender.concurrency = max(1, slots)  # type: ignore[attr-defined]


@signals.celeryd_after_setup.connect
def _load_models(sender: str, instance: object, **_: object) -> None:
    """Runs once -Q is applied and logging is set up, before the consumer takes any task.

    A worker never pretends: a model that fails to load is reported (log, and a failure record in
    its heartbeat that the gateway, `queuechat models` and /metrics show), its queue is not
    consumed, and a worker left with no model at all exits non-zero.  Any exception counts:
    Celery would log one escaping this handler and keep the worker running, serving nothing."""
    app = getattr(instance, "app", None)
    if not isinstance(app, QueueChatCelery):
        return
    queues = sorted(app.amqp.queues.consume_from or [])  # the -Q queues
    # Plain Redis or the Sentinels' master, as the settings say.  Every task thread (one per
    # slot: hundreds for a large batch) uses this client; past the pool's size a thread waits
    # for a free connection instead of failing its request.
    client = sync_client(app.settings, max_connections=64, timeout=30)
    outbox = Outbox(client)
    try:
        loaded = load_engines(app.settings, queues, outbox)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the worker must not stay up serving nothing
        log.critical("worker cannot start: %s", exc)
        raise SystemExit(2) from exc
    if loaded.failures:
        app.amqp.queues.deselect(list(loaded.failures))  # their tasks wait for a worker that can serve them
        log.error("serving %s; not serving %s (failed to load)", ", ".join(loaded.engines), ", ".join(loaded.failures))
    app.state = WorkerState(sender, app.settings, client, loaded.engines, outbox, failures=loaded.failures)


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
