"""Workers: Celery tasks that run jobs on the engines of the models they serve.

`celery -A workers worker -Q <model-name>` serves that model: Celery finds the app in
`workers/celery.py` (its documented `proj/celery.py` layout).  Importing this package builds no
Celery app and loads no model code.
"""
