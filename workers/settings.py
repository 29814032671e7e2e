"""Settings read from the environment (prefix QUEUECHAT_), one object per role."""

from __future__ import annotations

from pathlib import Path

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


class WorkerSettings(QueueSettings):
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "queuechat",
        description="where converted GGUF models are kept",
    )
    task_expiry: float = Field(600.0, gt=0)
