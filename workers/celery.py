"""The workers' Celery app: `celery -A workers worker -Q <model>` finds `app` here.

Tasks (and through them the engines and adapters) are imported by the worker itself, listed in
the app's `include`; the gateway builds its own sending app from the same settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery, bootsteps

from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from workers.lifecycle import WorkerState


class QueueChatCelery(Celery):
    """A Celery app that carries its settings and, inside a worker, the loaded models."""

    settings: WorkerSettings
    state: WorkerState | None = None  # set once the worker has loaded its models


class ModelsInStats(bootsteps.StartStopStep):
    """Adds the models a worker serves, and those it failed to load (with the reason), to its
    `inspect stats`: what Flower shows on the worker's Stats tab.  A start/stop step because only
    those join the worker's step list that `stats` reads; it starts and stops nothing."""

    def info(self, worker: object) -> dict:
        state = getattr(getattr(worker, "app", None), "state", None)
        if state is None:
            return {}
        return {"queuechat": {"serving": sorted(state.engines), "failed_to_load": dict(state.failures)}}


def make_celery(settings: WorkerSettings | None = None) -> QueueChatCelery:
    settings = settings or WorkerSettings()
    app = QueueChatCelery("queuechat", include=["workers.tasks"])
    app.settings = settings
    app.conf.update(settings.celery_conf())
    app.steps["worker"].add(ModelsInStats)
    return app


app = make_celery()
