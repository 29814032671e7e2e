"""The engine of sequence classifiers: each request's rows (texts, or text pairs) are run as one
batch, in chunks, one request at a time on the model; the task threads wait their turn."""

from __future__ import annotations

import threading
from collections.abc import Callable

from adapters import ClassifyAdapter
from protocol import SCORES, ScoreJob
from workers.contract import Scored, TakingTurns

CHUNK = 32  # rows per forward pass


class ScoringEngine(TakingTurns):
    """The engine of classify adapters: requests take turns on the model.  Its capabilities are
    its model's ("classify", and "score" for a cross-encoder)."""

    capabilities = SCORES  # the most it can do; each engine announces its model's

    def __init__(self, adapter: ClassifyAdapter, slots: int | None = None, on_step_end: Callable[[], None] = lambda: None,
                 keepalive: float = 5.0) -> None:  # fmt: skip
        super().__init__(adapter, slots)
        self.capabilities = adapter.capabilities
        self._tokenizing = threading.Lock()  # a fast tokenizer is not safe to share between threads

    def run(self, job: ScoreJob) -> Scored:
        """Every row's outputs; raises ContextLengthExceeded (naming the row) for one too long."""
        with self._tokenizing:
            encoded = self.adapter.encode(job.texts, job.param)
        with self.turn():
            values = [row for i in range(0, len(encoded), CHUNK)
                      for row in self.adapter.predict(encoded[i : i + CHUNK]).tolist()]  # fmt: skip
        tokens = sum(len(row["input_ids"]) for row in encoded)
        self.tokens_read += tokens
        return Scored(tuple(tuple(row) for row in values), self.adapter.labels, tokens)
