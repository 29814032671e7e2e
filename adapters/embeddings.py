"""Sentence embeddings from an encoder (BERT-like) folder, the sentence-transformers way:
transformer -> pooling (mean, CLS or max, from 1_Pooling/config.json) -> optional L2 normalize
(when modules.json lists a Normalize module).  Plain transformers; sentence-transformers is not
needed.  E.g. all-MiniLM-L6-v2 (384 dimensions, mean pooling, normalized)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from adapters.base import AdapterError, ContextLengthExceeded, EmbedAdapter
from adapters.hf_causal import pick_device, pick_dtype
from protocol import ModelSpec

log = logging.getLogger(__name__)


def load_encoder(spec: ModelSpec, path: Path, auto_class: Any) -> tuple[torch.device, Any, Any]:
    """(device, tokenizer, model in eval mode) of an encoder folder, by `auto_class` (AutoModel,
    AutoModelForSequenceClassification).  float32 on CPUs: results must match sentence-transformers'
    and the model run directly to 1e-5 (bf16 gives ~1e-2)."""
    from transformers import AutoTokenizer

    device = pick_device(spec.device)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    dtype = pick_dtype(spec.dtype, device, cpu_bf16=False)
    model = auto_class.from_pretrained(path, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    return device, tokenizer, model.to(device).eval()


class EmbeddingAdapter(EmbedAdapter):
    """Sentence-transformers style encoders (BERT, MiniLM...): pooling and normalization as the
    folder's sentence-transformers files say."""

    name = "embeddings"

    def load(self) -> None:
        from transformers import AutoModel

        started = time.monotonic()
        path = self.model_folder()
        self.device, self.tokenizer, self.model = load_encoder(self.spec, path, AutoModel)
        self.pooling, self.normalize, max_length = _sentence_transformers_setup(path)
        native = max_length or getattr(self.model.config, "max_position_embeddings", 512)
        self._context = min(native, self.spec.max_context) if self.spec.max_context else native
        self.dimensions = int(self.model.config.hidden_size)
        log.info("loaded %s (embeddings: %d dimensions, %s pooling%s, up to %d tokens) in %.1f s", self.spec.name,
                 self.dimensions, self.pooling, ", normalized" if self.normalize else "", self._context,
                 time.monotonic() - started)  # fmt: skip

    @property
    def context_length(self) -> int:
        return self._context

    def token_ids(self, inputs: tuple[str | tuple[int, ...], ...]) -> list[list[int]]:
        """Each input as the model's token ids (with [CLS]/[SEP]); raises when one is too long."""
        rows = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                ids = self.tokenizer.encode(item)
            else:
                if any(t < 0 or t >= self.tokenizer.vocab_size for t in item):
                    raise AdapterError(f"input[{i}] holds a token id outside this model's vocabulary.")
                ids = self._with_special_tokens(list(item))
            if len(ids) > self._context:
                raise ContextLengthExceeded(len(ids), self._context)
            rows.append(ids)
        return rows

    def _with_special_tokens(self, ids: list[int]) -> list[int]:
        """Wrap given token ids as the tokenizer wraps text: [CLS] ... [SEP] (or BOS ... EOS)."""
        tok = self.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        probe = tok.encode("a")  # does this tokenizer add them to text at all?
        head = [first] if first is not None and probe[:1] == [first] else []
        tail = [last] if last is not None and probe[-1:] == [last] else []
        return head + ids + tail

    @torch.inference_mode()
    def embed(self, rows: list[list[int]]) -> torch.Tensor:
        """One float32 vector per row, on the CPU."""
        pad = self.tokenizer.pad_token_id or 0
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        elif self.pooling == "max":
            vectors = hidden.masked_fill(mask[..., None] == 0, float("-inf")).max(dim=1).values
        else:
            weights = mask[..., None].float()
            vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors.cpu()


def _sentence_transformers_setup(path: Path) -> tuple[str, bool, int | None]:
    """(pooling mode, normalize?, max_seq_length) from the sentence-transformers files, with the
    usual defaults (mean pooling, no normalization) when they are absent."""
    pooling, normalize, max_length = "mean", False, None
    modules = _json(path / "modules.json") or []
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling"):
            config = _json(path / module.get("path", "") / "config.json") or {}
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif config.get("pooling_mode_max_tokens"):
                pooling = "max"
    if (config := _json(path / "sentence_bert_config.json")) and config.get("max_seq_length"):
        max_length = int(config["max_seq_length"])
    return pooling, normalize, max_length


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
