"""`queuechat flower`: Celery's Flower, counting every model queue of the models file.

Flower's broker view lists the queues of the workers it has seen; a queue whose workers are all
gone (tasks waiting for the next one) would vanish from it.  Here it always lists every model.
"""

from __future__ import annotations

from workers.models_file import load_models_file
from workers.settings import WorkerSettings


def run(argv: list[str]) -> None:
    from flower.views import BaseHandler

    import workers

    models = load_models_file(WorkerSettings().models_file).names
    seen_by_flower = BaseHandler.get_active_queue_names

    def every_model_queue(self: BaseHandler) -> list[str]:
        return sorted(set(seen_by_flower(self)) | set(models))

    BaseHandler.get_active_queue_names = every_model_queue  # type: ignore[method-assign]
    workers.app.start(["flower", *argv])
