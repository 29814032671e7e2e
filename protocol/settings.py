"""Settings every process must agree on, from the environment (prefix QUEUECHAT_).

Each role extends `QueueSettings` with its own: `gateway.settings.GatewaySettings`,
`workers.settings.WorkerSettings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_FILE = REPO_ROOT / "models.yaml"


class QueueSettings(BaseSettings):
    """What gateway and workers must agree on."""

    model_config = SettingsConfigDict(env_prefix="QUEUECHAT_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("redis_url", "QUEUECHAT_REDIS_URL", "REDIS_URL"),
    )
    models_file: Path = DEFAULT_MODELS_FILE
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between worker heartbeats")
    heartbeat_ttl: float = Field(3.0, gt=0, description="a worker silent this long counts as dead")
    keepalive_interval: float = Field(5.0, gt=0, description="a request with nothing to send for this long gets "
                                      "a keep-alive event; keep it well under the gateway's idle_timeout")
    result_ttl: int = Field(3600, ge=1, le=86400, description="seconds a kept job (stored, background or "
                            "resumable) and its event log stay in Redis after its last event")

    def celery_conf(self) -> dict[str, Any]:
        """The Celery configuration of every QueueChat app: the workers' (which run tasks) and the
        gateway's (which sends them).  Plain settings; building an app is each role's business."""
        return {
            "broker_url": self.redis_url,
            "task_serializer": "json",
            "accept_content": ["json"],
            "task_ignore_result": True,  # results travel on pub/sub, not through a result backend
            # A task is acknowledged when it ends, and a worker holds one unacknowledged task per
            # slot: the backlog stays in Redis, visible in Flower, until a worker has room.
            "task_acks_late": True,
            "worker_prefetch_multiplier": 1,
            # Threads, not prefork: models are loaded once in the worker's main process (CUDA does
            # not survive fork), and the consumer keeps heartbeating while a task generates.
            "worker_pool": "threads",
            # "auto" unless -c says otherwise: the worker sizes its pool to the served models'
            # batch slots at start-up (workers/lifecycle.py).
            "worker_concurrency": "auto",
            # No ack emulation in Redis: a task taken by a worker that dies is not restored and
            # generated twice (the gateway reports the dead worker instead: at most once), and the
            # worker survives a Redis restart (kombu 5.7 crashes restoring unacked tasks when the
            # connection is lost). Late acks still make the pool's size the prefetch limit.
            "broker_transport_options": {"ack_emulation": False},
            "worker_send_task_events": True,  # for Flower
            "task_send_sent_event": True,
            "broker_connection_retry_on_startup": True,
            "worker_cancel_long_running_tasks_on_connection_loss": False,
        }
