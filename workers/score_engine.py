"""The engine of sequence classifiers: each request's rows (texts, or text pairs) are run as one
batch, in chunks, one request at a time on the model; the task threads wait their turn."""

from __future__ import annotations

import threading
from collections.abc import Callable

from adapters import ClassifyAdapter
from protocol import SCORES, ModelSpec, ScoreJob
from workers.contract import EngineBase, Scored
from workers.sizing import EMBED_SLOTS

CHUNK = 32  # rows per forward pass


class ScoringEngine(EngineBase):
    """The engine of classify adapters: requests take turns on the model.  Its capabilities are
    its model's ("classify", and "score" for a cross-encoder)."""

    capabilities = SCORES  # the most it can do; each engine announces its model's

    def __init__(self, adapter: ClassifyAdapter, slots: int | None = None, on_step_end: Callable[[], None] = lambda: None,
                 keepalive: float = 5.0) -> None:  # fmt: skip
        self.adapter = adapter  # events are published by the task itself: nothing to flush or keep alive
        self.capabilities = adapter.capabilities
        self.slots = slots or EMBED_SLOTS
        self._lock = threading.Lock()  # the model: one request at a time
        self._tokenizing = threading.Lock()  # a fast tokenizer is not safe to share between threads
        self._active = 0
        self.tokens_read = 0

    @staticmethod
    def pool_slots(spec: ModelSpec) -> int:
        return spec.slots or EMBED_SLOTS

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self._active)

    def stats(self) -> dict[str, int]:
        """"tokens" counts the tokens read (classifiers generate none)."""
        return {"running": self._active, "slots": self.slots, "tokens": self.tokens_read}

    def run(self, job: ScoreJob) -> Scored:
        """Every row's outputs; raises ContextLengthExceeded (naming the row) for one too long."""
        with self._tokenizing:
            encoded = self.adapter.encode(job.texts, job.param)
        self._active += 1
        try:
            with self._lock:
                values = [row for i in range(0, len(encoded), CHUNK)
                          for row in self.adapter.predict(encoded[i : i + CHUNK]).tolist()]  # fmt: skip
        finally:
            self._active -= 1
        tokens = sum(len(row["input_ids"]) for row in encoded)
        self.tokens_read += tokens
        return Scored(tuple(tuple(row) for row in values), self.adapter.labels, tokens)

    def close(self) -> None:
        pass
