"""The Celery app: `celery -A workers worker -Q <model-name>` serves that model.

Importing this package loads no model code: tasks (and through them the adapters) are imported
by the worker itself, listed in the app's `include`.
"""

from workers.celery_app import make_celery

app = make_celery()

__all__ = ["app"]
