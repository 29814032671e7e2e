"""Worker settings, from the environment (prefix QUEUECHAT_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from protocol.settings import QueueSettings


class WorkerSettings(QueueSettings):
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "queuechat",
        description="where converted GGUF models are kept",
    )
