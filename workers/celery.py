"""The workers' Celery app: `celery -A workers worker -Q <model>` finds `app` here.

Tasks (and through them the engines and adapters) are imported by the worker itself, listed in
the app's `include`; the gateway builds its own sending app from the same settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from workers.lifecycle import WorkerState


class QueueChatCelery(Celery):
    """A Celery app that carries its settings and, inside a worker, the loaded models."""

    settings: WorkerSettings
    state: WorkerState | None = None  # set once the worker has loaded its models


def make_celery(settings: WorkerSettings | None = None) -> QueueChatCelery:
    settings = settings or WorkerSettings()
    app = QueueChatCelery("queuechat", include=["workers.tasks"])
    app.settings = settings
    app.conf.update(settings.celery_conf())
    return app


app = make_celery()
