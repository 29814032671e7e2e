"""The engine for embedding models: each request's inputs are embedded as one batch (in chunks),
one request at a time on the model; the task threads wait their turn."""

from __future__ import annotations

import base64

from adapters import AdapterError
from protocol import EMBEDS, EmbedJob
from workers.contract import TakingTurns

CHUNK = 64  # rows per forward pass


class DimensionsNotSupported(AdapterError):
    param = "dimensions"


class EmbeddingEngine(TakingTurns):
    """The engine of embed adapters: requests take turns on the model."""

    capabilities = EMBEDS

    def run(self, job: EmbedJob) -> tuple[tuple[str, ...], int]:
        """(each input's vector as base64 little-endian float32, tokens read)."""
        if job.dimensions is not None and job.dimensions != self.adapter.dimensions:
            raise DimensionsNotSupported(
                f"Model '{job.model}' gives {self.adapter.dimensions}-dimensional embeddings and cannot "
                f"shorten them; leave 'dimensions' out or set it to {self.adapter.dimensions}."
            )
        rows = self.adapter.token_ids(job.inputs)
        with self.turn():
            vectors = [v for i in range(0, len(rows), CHUNK) for v in self.adapter.embed(rows[i : i + CHUNK])]
        self.tokens_read += sum(len(r) for r in rows)
        encoded = tuple(base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() for v in vectors)
        return encoded, sum(len(r) for r in rows)
