"""Reuse the KV cache of prompt prefixes seen before (the chat template's system prompt, a shared
instruction...): a new prompt computes only the tokens after its longest cached prefix.

Prefixes are cached at block boundaries (every `block` tokens), most recently used kept.  The
cached keys and values of a prefix do not depend on what follows it (attention is causal), so a
prompt's result is the same as computing it whole, up to floating-point rounding.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values, each [1, heads, tokens, dim]


class PrefixCache:
    def __init__(self, block: int = 16, capacity: int = 256) -> None:
        self.block = block
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def longest(self, ids: list[int]) -> tuple[int, KV | None]:
        """The longest cached block-aligned prefix of `ids` that leaves at least one token to compute."""
        length = (len(ids) - 1) // self.block * self.block
        while length > 0:
            key = tuple(ids[:length])
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return length, self._entries[key]
            length -= self.block
        self.misses += 1
        return 0, None

    def store(self, ids: list[int], kv: KV) -> None:
        """Remember every block-aligned prefix of `ids` (kv covers at least those tokens)."""
        for length in range(self.block, len(ids), self.block):
            key = tuple(ids[:length])
            if key in self._entries:
                self._entries.move_to_end(key)
                continue
            self._entries[key] = [(k[:, :, :length].clone(), v[:, :, :length].clone()) for k, v in kv]
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
