"""Reuse the KV cache of prompt prefixes seen before (the chat template's system prompt, a shared
instruction...): a new prompt computes only the tokens after its longest cached prefix.

The cache is a tree of blocks of `block` tokens, as in vLLM's and SGLang's prefix caches: a node
holds the keys and values of its own block only and is found by (its parent, its tokens), so a
prompt of N tokens costs N tokens of KV however many of its prefixes are looked up later, and
prompts that share a beginning share its blocks.  The cached keys and values of a prefix do not
depend on what follows it (attention is causal), so a prompt's result is the same as computing
it whole, up to floating-point rounding.

Memory is bounded in bytes: blocks live in one pool of fixed-size slots, allocated once at the
bound (memory the operating system only commits as slots are first written), so the cache
neither fragments the heap nor grows past its bound.  Eviction is least-recently-used, leaves
first: every use touches a chain from its deepest block up to its root, so a parent is always
more recent than its children and the oldest block never has a child.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values, each [1, heads, tokens, dim]
Key = tuple[int, tuple[int, ...]]  # (parent block's node id, this block's tokens)
_ROOT = 0

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Block:
    node: int  # this block's id: its children's parent
    slot: int  # where its keys and values sit in the pool


class _Pool:
    """Fixed-size slots for the keys and values of one block each: [slots, layers, heads, block, dim]."""

    def __init__(self, sample: KV, block: int, max_bytes: int) -> None:
        keys, values = sample[0]
        layers = len(sample)
        k_shape = (layers, keys.shape[1], block, keys.shape[3])
        v_shape = (layers, values.shape[1], block, values.shape[3])
        self.block_bytes = (_numel(k_shape) + _numel(v_shape)) * keys.element_size()
        self.slots = max_bytes // self.block_bytes
        self.keys = torch.empty((self.slots, *k_shape), dtype=keys.dtype, device=keys.device)
        self.values = torch.empty((self.slots, *v_shape), dtype=values.dtype, device=values.device)
        self.free = list(range(self.slots - 1, -1, -1))

    def write(self, slot: int, kv: KV) -> None:
        for layer, (k, v) in enumerate(kv):
            self.keys[slot, layer].copy_(k[0])
            self.values[slot, layer].copy_(v[0])

    def read(self, slots: list[int]) -> KV:
        """The blocks in order, as one [1, heads, tokens, dim] pair per layer."""
        index = torch.tensor(slots, device=self.keys.device)
        joined = []
        for pool in (self.keys, self.values):
            picked = pool.index_select(0, index)  # [n, layers, heads, block, dim]
            n, layers, heads, block, dim = picked.shape
            joined.append(picked.permute(1, 2, 0, 3, 4).reshape(layers, 1, heads, n * block, dim))
        return [(joined[0][layer], joined[1][layer]) for layer in range(joined[0].shape[0])]


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


class PrefixCache:
    def __init__(self, max_bytes: int, block: int = 16) -> None:
        self.block = block
        self.max_bytes = max(0, int(max_bytes))
        self._pool: _Pool | None = None  # made at the first store, when the shapes are known
        self._blocks: OrderedDict[Key, _Block] = OrderedDict()  # oldest first
        self._next_node = _ROOT + 1
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def bytes(self) -> int:
        """What the cached blocks take (the pool's slots in use)."""
        return len(self._blocks) * self._pool.block_bytes if self._pool else 0

    def _chain(self, ids: list[int], blocks: int) -> list[tuple[Key, _Block]]:
        """The cached blocks that start `ids`, at most `blocks` of them, root first."""
        chain, parent = [], _ROOT
        for start in range(0, blocks * self.block, self.block):
            key = (parent, tuple(ids[start : start + self.block]))
            found = self._blocks.get(key)
            if found is None:
                break
            chain.append((key, found))
            parent = found.node
        return chain

    def _touch(self, keys: list[Key]) -> None:
        for key in reversed(keys):  # deepest first: the root ends up the most recent
            self._blocks.move_to_end(key)

    def cached_length(self, ids: list[int]) -> int:
        """What `longest(ids)` would reuse, without using it."""
        return len(self._chain(ids, (len(ids) - 1) // self.block)) * self.block

    def longest(self, ids: list[int]) -> tuple[int, KV | None]:
        """The longest cached block-aligned prefix of `ids` that leaves at least one token to
        compute: its length and its keys and values (new tensors)."""
        chain = self._chain(ids, (len(ids) - 1) // self.block)
        if not chain or self._pool is None:
            self.misses += 1
            return 0, None
        self.hits += 1
        self._touch([key for key, _ in chain])
        return len(chain) * self.block, self._pool.read([b.slot for _, b in chain])

    def store(self, ids: list[int], kv_of: Callable[[int, int], KV]) -> None:
        """Remember the full blocks of `ids`.  `kv_of(start, end)` gives the keys and values of
        tokens start..end-1 (views are fine: they are copied into the pool)."""
        blocks = len(ids) // self.block
        if self.max_bytes == 0 or blocks == 0:
            return
        if self._pool is None and not self._make_pool(kv_of(0, self.block)):
            return
        assert self._pool is not None
        chain = self._chain(ids, blocks)
        keys = [key for key, _ in chain]
        self._touch(keys)  # the last len(keys) entries now: safe from eviction below
        parent = chain[-1][1].node if chain else _ROOT
        for start in range(len(chain) * self.block, blocks * self.block, self.block):
            if not self._pool.free and not self._evict_one(protect=len(keys)):
                break  # the rest of this prompt does not fit beside its own beginning
            slot = self._pool.free.pop()
            self._pool.write(slot, kv_of(start, start + self.block))
            key = (parent, tuple(ids[start : start + self.block]))
            self._blocks[key] = _Block(self._next_node, slot)
            parent, self._next_node = self._next_node, self._next_node + 1
            keys.append(key)
        self._touch(keys)

    def _make_pool(self, sample: KV) -> bool:
        try:
            self._pool = _Pool(sample, self.block, self.max_bytes)
        except (RuntimeError, IndexError) as exc:  # layers of different shapes, or no memory
            log.warning("prefix cache off: %s", exc)
            self.max_bytes = 0
            return False
        if self._pool.slots == 0:
            self.max_bytes = 0
            return False
        return True

    def _evict_one(self, protect: int) -> bool:
        """Free the least recently used block's slot, unless only the last `protect` entries
        (the chain being stored) are left."""
        if len(self._blocks) <= protect:
            return False
        _, gone = self._blocks.popitem(last=False)
        assert self._pool is not None
        self._pool.free.append(gone.slot)
        return True
