"""Gateway settings, from the environment (prefix QUEUECHAT_)."""

from __future__ import annotations

from pydantic import Field

from workers.settings import QueueSettings


class GatewaySettings(QueueSettings):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    queue_timeout: float = Field(
        300.0, gt=0, description="longest wait for a worker to start a request; also the task expiry"
    )
    idle_timeout: float = Field(60.0, gt=0, description="longest silence from a worker mid-request")
