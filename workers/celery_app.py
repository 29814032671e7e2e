"""Builds the Celery app shared by workers (which run it) and the gateway (which sends to it)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from workers.settings import WorkerSettings


class QueueChatCelery(Celery):
    """A Celery app that carries its settings and, inside a worker, the loaded models."""

    settings: WorkerSettings
    state: Any = None  # workers.lifecycle.WorkerState once the worker has loaded its models


def make_celery(settings: WorkerSettings | None = None) -> QueueChatCelery:
    settings = settings or WorkerSettings()
    app = QueueChatCelery("queuechat", broker=settings.redis_url, include=["workers.tasks"])
    app.settings = settings
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results travel on pub/sub, not through a result backend
        # A task is acknowledged when it ends, and a worker holds one unacknowledged task per
        # slot: the backlog stays in Redis, visible in Flower, until a worker has room.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # Threads, not prefork: models are loaded once in the worker's main process (CUDA does
        # not survive fork), and the consumer keeps heartbeating while a task generates.
        worker_pool="threads",
        worker_concurrency=1,  # raised to the models' batch slots at start-up (workers/lifecycle.py)
        # No ack emulation in Redis: a task taken by a worker that dies is not restored and
        # generated twice (the gateway reports the dead worker instead: at most once), and the
        # worker survives a Redis restart (kombu 5.7 crashes restoring unacked tasks when the
        # connection is lost). Late acks still make the pool's size the prefetch limit.
        broker_transport_options={"ack_emulation": False},
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
