"""A growing and shrinking batch of sequences over one Hugging Face model's KV cache.

Rows are left-padded to a common length: a new row joins by being prefilled on its own (with the
other newcomers) and concatenated onto the running cache; a finished row leaves by being dropped
from it.  Each row keeps its own position ids, and the attention mask hides the padding, so a
row's tokens do not depend on its neighbours (up to floating-point rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapters.base import DecodeBatch


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Pad `t` with zeros on the left of `dim` up to `width`."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad)


class HfDecodeBatch(DecodeBatch):
    def __init__(self, model: torch.nn.Module, device: torch.device, forward_kwargs: dict[str, str | int],
                 pad_id: int) -> None:  # fmt: skip
        self._model = model
        self._device = device
        self._cache_kwarg = str(forward_kwargs.pop("cache"))
        self._extra = forward_kwargs  # e.g. logits_to_keep=1: only the last position's logits
        self._pad_id = pad_id
        self._reset()

    def _reset(self) -> None:
        self._cache = None
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 where a real token sits
        self._next_position: torch.Tensor | None = None  # [rows]: position id of each row's next token

    def __len__(self) -> int:
        return 0 if self._mask is None else self._mask.shape[0]

    @property
    def columns(self) -> int:
        return 0 if self._mask is None else self._mask.shape[1]

    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **self._extra)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        self._merge(cache, mask)
        return out.logits[:, -1, :]

    def _merge(self, cache: object, mask: torch.Tensor) -> None:
        lengths = mask.sum(-1)
        if self._cache is None:
            self._cache, self._mask, self._next_position = cache, mask, lengths
            return
        width = max(self.columns, mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers):  # type: ignore[attr-defined]
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])
        self._next_position = torch.cat([self._next_position, lengths])

    def step(self, tokens: list[int]) -> torch.Tensor:
        assert self._mask is not None and len(tokens) == len(self)
        ids = torch.tensor(tokens, dtype=torch.long, device=self._device).unsqueeze(1)
        self._mask = F.pad(self._mask, (0, 1), value=1)
        positions = self._next_position.unsqueeze(1)
        out = self._model(
            input_ids=ids, attention_mask=self._mask, position_ids=positions, use_cache=True,
            **{self._cache_kwarg: self._cache}, **self._extra,
        )  # fmt: skip
        self._next_position = self._next_position + 1
        return out.logits[:, -1, :]

    def remove(self, rows: list[int]) -> None:
        if not rows:
            return
        keep = [r for r in range(len(self)) if r not in set(rows)]
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, device=self._device)
        mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row are dropped too.
        first = int((mask.sum(0) > 0).nonzero()[0])
        for layer in self._cache.layers:  # type: ignore[union-attr]
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._mask = mask[:, first:]
        self._next_position = self._next_position.index_select(0, index)
