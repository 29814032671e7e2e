"""The Celery app: `celery -A workers worker -Q <model-name>` serves that model.

Importing this package loads no model code: tasks (and through them the adapters) are imported
by the worker itself, listed in the app's `include`.
"""

import sys

from workers.celery_app import make_celery

app = make_celery()

if "flower" in sys.argv[1:]:  # `celery -A workers flower`: list every model queue (queuechat/flower.py)
    from queuechat.flower import count_every_model_queue

    count_every_model_queue()

__all__ = ["app"]
