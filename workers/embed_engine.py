"""The engine for embedding models: each request's inputs are embedded as one batch (in chunks),
one request at a time on the model; the task threads wait their turn."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable

from adapters import AdapterError, EmbedAdapter
from protocol import EMBEDS, EmbedJob, ModelSpec
from workers.contract import EngineBase
from workers.sizing import EMBED_SLOTS

CHUNK = 64  # rows per forward pass


class DimensionsNotSupported(AdapterError):
    param = "dimensions"


class EmbeddingEngine(EngineBase):
    """The engine of embed adapters: requests take turns on the model."""

    capabilities = EMBEDS

    def __init__(self, adapter: EmbedAdapter, slots: int | None = None, on_step_end: Callable[[], None] = lambda: None,
                 keepalive: float = 5.0) -> None:  # fmt: skip
        self.adapter = adapter  # events are published by the task itself: nothing to flush or keep alive
        self.slots = slots or EMBED_SLOTS
        self._lock = threading.Lock()
        self._active = 0
        self.tokens_read = 0

    @staticmethod
    def pool_slots(spec: ModelSpec) -> int:
        return spec.slots or EMBED_SLOTS

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self._active)

    def stats(self) -> dict[str, int]:
        """"tokens" counts the tokens read (embeddings generate none)."""
        return {"running": self._active, "slots": self.slots, "tokens": self.tokens_read}

    def run(self, job: EmbedJob) -> tuple[tuple[str, ...], int]:
        """(each input's vector as base64 little-endian float32, tokens read)."""
        if job.dimensions is not None and job.dimensions != self.adapter.dimensions:
            raise DimensionsNotSupported(
                f"Model '{job.model}' gives {self.adapter.dimensions}-dimensional embeddings and cannot "
                f"shorten them; leave 'dimensions' out or set it to {self.adapter.dimensions}."
            )
        rows = self.adapter.token_ids(job.inputs)
        self._active += 1
        try:
            with self._lock:
                vectors = [v for i in range(0, len(rows), CHUNK) for v in self.adapter.embed(rows[i : i + CHUNK])]
        finally:
            self._active -= 1
        self.tokens_read += sum(len(r) for r in rows)
        encoded = tuple(base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() for v in vectors)
        return encoded, sum(len(r) for r in rows)

    def close(self) -> None:
        pass
