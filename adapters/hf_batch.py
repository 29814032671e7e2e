"""A growing and shrinking batch of sequences over one Hugging Face model's KV cache.

Rows are left-padded to a common length: a new row joins by being prefilled on its own (after
the longest prefix whose KV is already cached; in chunks, between the batch's steps, when the
engine asks) and concatenated onto the running cache; a finished row leaves by being dropped
from it.  Each row keeps its own position ids, and the attention mask hides the padding, so a
row's tokens do not depend on its neighbours (up to floating-point rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from adapters.base import DecodeBatch, Prefill, PromptScores
from adapters.memory import give_back_free_memory
from adapters.prefix_cache import KV, PrefixCache
from adapters.sampling import score_positions

_LONG_PREFILL = 1024  # new tokens (rows x columns) after whose prefill freed memory is returned


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Pad `t` with zeros on the left of `dim` up to `width`."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad)


class HfDecodeBatch(DecodeBatch):
    scores_prompts = True

    def __init__(self, model: torch.nn.Module, device: torch.device, forward_kwargs: dict[str, str | int],
                 new_cache: Callable[[], Any], prefixes: PrefixCache | None) -> None:  # fmt: skip
        self._model = model
        self._new_cache = new_cache
        self._prefixes = prefixes
        self._device = device
        self._cache_kwarg = str(forward_kwargs.pop("cache"))
        self._extra = forward_kwargs  # e.g. logits_to_keep=1: only the last position's logits
        self._reset()

    def _reset(self) -> None:
        self._cache = None
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 where a real token sits
        self._next_position: torch.Tensor | None = None  # [rows]: position id of each row's next token
        if getattr(self, "_give_back_when_empty", False):  # the KV cache of a long prompt was just freed
            give_back_free_memory(self._device)
        self._give_back_when_empty = False

    def __len__(self) -> int:
        return 0 if self._mask is None else self._mask.shape[0]

    @property
    def columns(self) -> int:
        return 0 if self._mask is None else self._mask.shape[1]

    def _cached_lengths(self, prompts: list[list[int]], whole: Sequence[bool] = ()) -> list[int]:
        whole = list(whole) or [False] * len(prompts)
        return [self._prefixes.cached_length(p) if self._prefixes and not w else 0 for p, w in zip(prompts, whole)]

    def width_with(self, prompts: list[list[int]], whole: Sequence[bool] = ()) -> int:
        """Prefilled together, rows take [their cached prefix | the rest], each part padded to
        the longest among them."""
        cached = self._cached_lengths(prompts, whole)
        return max(cached) + max(len(p) - c for p, c in zip(prompts, cached))

    def prefill_columns(self, prompts: list[list[int]], whole: Sequence[bool] = ()) -> int:
        return max(len(p) - c for p, c in zip(prompts, self._cached_lengths(prompts, whole)))

    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill the newcomers in one forward pass and join them to the batch."""
        prefill = self.start(prompts)
        logits = prefill.feed(prefill.remaining)
        assert logits is not None
        return logits

    def start(self, prompts: list[list[int]], scored: Sequence[int | None] = ()) -> _HfPrefill:
        return _HfPrefill(self, prompts, scored)

    @staticmethod
    def _row_kv(cache: Any, row: int, cached: int, prefix_offset: int, fresh_offset: int, start: int, end: int) -> KV:
        """Keys and values of tokens start..end-1 of a row just prefilled: token t sits at column
        prefix_offset + t when it was in the row's cached prefix (t < cached), else at
        fresh_offset + t.  A block never straddles the two (both ends are block-aligned)."""
        first = (prefix_offset if start < cached else fresh_offset) + start
        return [(layer.keys[row : row + 1, :, first : first + end - start],
                 layer.values[row : row + 1, :, first : first + end - start]) for layer in cache.layers]  # fmt: skip

    def _stack_prefixes(self, found: list, layer: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, heads, width, dim] keys and values: each row's cached prefix, right-aligned."""
        sample_k, sample_v = next(kv for _, kv in found if kv is not None)[layer]
        shape = (len(found), sample_k.shape[1], width, sample_k.shape[3])
        keys = sample_k.new_zeros(shape)
        values = sample_v.new_zeros(shape[:3] + (sample_v.shape[3],))
        for r, (length, kv) in enumerate(found):
            if kv is not None:
                keys[r, :, width - length :] = kv[layer][0][0]
                values[r, :, width - length :] = kv[layer][1][0]
        return keys, values

    def _merge(self, cache: object, mask: torch.Tensor) -> None:
        lengths = mask.sum(-1)  # a row's next position: its real tokens so far
        if self._cache is None:
            self._cache, self._mask, self._next_position = cache, mask, lengths
            return
        width = max(self.columns, mask.shape[1])
        joined = lambda mine, theirs: torch.cat([_left_pad(mine, width, -2), _left_pad(theirs, width, -2)])  # noqa: E731
        # Everything new is built before anything is replaced: running out of memory half-way
        # leaves the batch as it was.
        layers = [(joined(mine.keys, theirs.keys), joined(mine.values, theirs.values))
                  for mine, theirs in zip(self._cache.layers, cache.layers)]  # type: ignore[attr-defined]  # fmt: skip
        merged_mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])
        for layer, (keys, values) in zip(self._cache.layers, layers):  # type: ignore[attr-defined]
            layer.keys, layer.values = keys, values
        self._mask = merged_mask
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


class _HfPrefill(Prefill):
    """Newcomers prefilled together, each after its longest cached prefix, in their own KV cache
    until the last chunk is computed; then they join the batch.  Row r's columns: [padding | its
    cached prefix][padding | its new tokens].  A chunk attends to the prefix and the chunks before
    it through that cache, so the result is the same as one pass, up to floating-point rounding.
    A scored row (prompt logprobs) is computed whole, and each chunk that holds some of its
    positions keeps every position's logits to score them."""

    def __init__(self, batch: HfDecodeBatch, prompts: list[list[int]], scored: Sequence[int | None] = ()) -> None:
        self._batch, self._prompts = batch, prompts
        self._scored = list(scored) or [None] * len(prompts)
        self.prompt_scores = [PromptScores() if k is not None else None for k in self._scored]
        prefixes = batch._prefixes
        found = [prefixes.longest(p) if prefixes and k is None else (0, None) for p, k in zip(prompts, self._scored)]
        self._cached = [length for length, _ in found]
        self._fresh = [len(p) - c for p, c in zip(prompts, self._cached)]
        width_p, width_s = max(self._cached), max(self._fresh)
        rows = len(prompts)
        ids = torch.full((rows, width_s), 0, dtype=torch.long)
        mask = torch.zeros((rows, width_p + width_s), dtype=torch.long)
        positions = torch.zeros((rows, width_s), dtype=torch.long)
        for r, (prompt, c, s) in enumerate(zip(prompts, self._cached, self._fresh)):
            ids[r, width_s - s :] = torch.tensor(prompt[c:])
            mask[r, width_p - c : width_p] = 1
            mask[r, width_p + width_s - s :] = 1
            positions[r, width_s - s :] = torch.arange(c, c + s)
        self._cache = batch._new_cache()
        if width_p:
            for layer in range(len(next(kv for _, kv in found if kv is not None))):
                keys, values = batch._stack_prefixes(found, layer, width_p)
                self._cache.update(keys, values, layer)
        device = batch._device
        self._ids, self._mask, self._positions = ids.to(device), mask.to(device), positions.to(device)
        self._width_p, self._done = width_p, 0

    @property
    def remaining(self) -> int:
        return self._ids.shape[1] - self._done

    def feed(self, columns: int) -> torch.Tensor | None:
        batch, start = self._batch, self._done
        end = min(self._ids.shape[1], start + max(1, columns))
        scoring = any(k is not None for k in self._scored)
        extra = {k: (0 if scoring else v) for k, v in batch._extra.items()}  # logits_to_keep=0: every position's
        out = batch._model(
            input_ids=self._ids[:, start:end], attention_mask=self._mask[:, : self._width_p + end],
            position_ids=self._positions[:, start:end], use_cache=True,
            **{batch._cache_kwarg: self._cache}, **extra,
        )  # fmt: skip
        if scoring:
            self._score(out.logits, start, end)
        self._done = end
        if self.remaining:
            return None
        if batch._prefixes is not None:
            width_p, width_s = self._width_p, self._ids.shape[1]
            for r, prompt in enumerate(self._prompts):
                c, s = self._cached[r], self._fresh[r]
                offsets = (width_p - c, width_p + width_s - s - c)
                batch._prefixes.store(prompt, partial(batch._row_kv, self._cache, r, c, *offsets))
        batch._merge(self._cache, self._mask)
        if self._ids.numel() >= _LONG_PREFILL:  # its activations are free now; its KV goes when the batch empties
            give_back_free_memory(batch._device)
            batch._give_back_when_empty = True
        return out.logits[:, -1, :]

    def _score(self, logits: torch.Tensor, start: int, end: int) -> None:
        """Add the scores of columns start..end-1 to the scored rows' (column j's logits predict
        the token in column j + 1; a row's last column predicts what it generates)."""
        width = self._ids.shape[1]
        for r, top in enumerate(self._scored):
            scores = self.prompt_scores[r]
            if top is None or scores is None:
                continue
            first = max(start, width - self._fresh[r])  # the row's first real column in this chunk
            last = min(end, width - 1)  # exclusive: the last column predicts no prompt token
            if first >= last:
                continue
            targets = self._ids[r, first + 1 : last + 1]
            scores.extend(score_positions(logits[r, first - start : last - start], targets, top))
