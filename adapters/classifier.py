"""Sequence classifiers (`*ForSequenceClassification`: BERT classifiers, cross-encoders) with
plain transformers: AutoModelForSequenceClassification + AutoTokenizer, float32 on CPUs.

The outputs are activated as sentence-transformers' CrossEncoder and transformers'
text-classification pipeline do:

- config.json's `sentence_transformers.activation_fn` (what a CrossEncoder saved) when present:
  Sigmoid, Identity (raw logits) or Softmax;
- else sigmoid for one output (a cross-encoder's relevance score, in 0..1) or a
  `multi_label_classification` model, softmax over the classes otherwise.

A model with one output also scores text pairs (`score` capability: /v1/score, /v1/rerank); with
several, a "score" would have to pick a class, so it only classifies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from adapters.base import ClassifyAdapter, ContextLengthExceeded
from adapters.embeddings import load_encoder
from adapters.select import read_config
from protocol import CLASSIFIES, SCORES, Capability

log = logging.getLogger(__name__)

ACTIVATIONS = ("sigmoid", "softmax", "identity")
_UNBOUNDED = 1_000_000  # tokenizers without a model_max_length report ~1e30


class InputTooLong(ContextLengthExceeded):
    def __init__(self, where: str, tokens: int, limit: int, pair: bool) -> None:
        super().__init__(tokens, limit)
        what = "together with its query " if pair else ""
        self.args = (f"{where} is {tokens} tokens long {what}(with the special tokens), but this model reads at "
                     f"most {limit} tokens at a time. Shorten it.",)  # fmt: skip


def activation_of(config: dict[str, Any]) -> str:
    """How the logits become the answer (see the module's docstring), from config.json."""
    saved = config.get("sentence_transformers")
    name = str(saved.get("activation_fn") or "") if isinstance(saved, dict) else ""
    for activation in ACTIVATIONS:
        if name.lower().endswith(activation):
            return activation
    labels = config.get("id2label")
    outputs = int(config.get("num_labels") or (len(labels) if isinstance(labels, dict) and labels else 2))
    if outputs == 1 or config.get("problem_type") == "multi_label_classification":
        return "sigmoid"
    return "softmax"


class SequenceClassifierAdapter(ClassifyAdapter):
    """Any `AutoModelForSequenceClassification` folder; class names from config.json's id2label."""

    name = "classifier"

    def load(self) -> None:
        from transformers import AutoModelForSequenceClassification

        started = time.monotonic()
        path = self.model_folder()
        self.device, self.tokenizer, self.model = load_encoder(self.spec, path, AutoModelForSequenceClassification)
        config = self.model.config
        if config.pad_token_id is None:  # decoder classifiers find each row's last token by its padding
            config.pad_token_id = self._pad_id
        outputs = int(config.num_labels)
        self.labels = tuple(str(config.id2label.get(i, f"LABEL_{i}")) for i in range(outputs))
        self.activation = activation_of(read_config(path))
        self._context = self._native_context()
        if self.spec.max_context:
            self._context = min(self._context, self.spec.max_context)
        log.info("loaded %s (sequence classifier: %d output%s, %s, up to %d tokens) in %.1f s", self.spec.name,
                 outputs, "" if outputs == 1 else "s", self.activation, self._context,
                 time.monotonic() - started)  # fmt: skip

    def _native_context(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        found = [int(n) for n in limits if isinstance(n, int) and 0 < n < _UNBOUNDED]
        return min(found) if found else 512

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def capabilities(self) -> tuple[Capability, ...]:
        return SCORES if len(self.labels) == 1 else CLASSIFIES

    def encode(self, rows: Sequence[tuple[str, ...]], param: str) -> list[dict[str, list[int]]]:
        encoded = []
        for i, row in enumerate(rows):
            tokens = self.tokenizer(*row, truncation=False, verbose=False)
            ids = list(tokens["input_ids"])
            if len(ids) > self._context:
                raise InputTooLong(f"{param}[{i}]", len(ids), self._context, pair=len(row) > 1)
            item = {"input_ids": ids}
            if "token_type_ids" in tokens:
                item["token_type_ids"] = list(tokens["token_type_ids"])
            encoded.append(item)
        return encoded

    @torch.inference_mode()
    def predict(self, encoded: list[dict[str, list[int]]]) -> torch.Tensor:
        width = max(len(row["input_ids"]) for row in encoded)

        def padded(key: str, fill: int) -> torch.Tensor:
            rows = [row[key] + [fill] * (width - len(row[key])) for row in encoded]
            return torch.tensor(rows, device=self.device)

        inputs = {"input_ids": padded("input_ids", self._pad_id),
                  "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                                  for r in encoded], device=self.device)}  # fmt: skip
        if "token_type_ids" in encoded[0]:
            inputs["token_type_ids"] = padded("token_type_ids", 0)
        logits = self.model(**inputs).logits.float()
        if self.activation == "sigmoid":
            logits = torch.sigmoid(logits)
        elif self.activation == "softmax":
            logits = torch.softmax(logits, dim=-1)
        return logits.cpu()
