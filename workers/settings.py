"""Worker settings, from the environment (prefix QUEUECHAT_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from protocol import EngineKind
from protocol.settings import QueueSettings


class WorkerSettings(QueueSettings):
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "queuechat",
        description="where converted GGUF models are kept",
    )
    engine: EngineKind | None = Field(
        None,
        description="run every generating model of this worker on this engine, whatever the models file says "
        "(`make run ENGINE=llama-cpp`)",
    )
    llama_server: Path | None = Field(
        None, description="the llama.cpp server program (default: llama-server on PATH, else `make llama-cpp`'s build)"
    )
