"""PrefixCache: block-aligned prefixes, one token always left to compute, blocks shared between
prompts and stored once, a bound in bytes with least-recently-used leaves evicted first."""

from __future__ import annotations

import torch

from adapters.prefix_cache import PrefixCache

LAYERS = 2
BLOCK_BYTES = lambda block: LAYERS * 2 * block * 4  # noqa: E731  (float32, one head, dim 1)


def _kv_of(tokens: int):
    """kv_of(start, end) over keys [0, 1, 2, ...] and values [0, -1, -2, ...] of one prompt."""
    marks = torch.arange(tokens, dtype=torch.float32).view(1, 1, tokens, 1)
    layers = [(marks.clone(), -marks.clone()) for _ in range(LAYERS)]
    return lambda start, end: [(k[:, :, start:end], v[:, :, start:end]) for k, v in layers]


def _store(cache: PrefixCache, ids: list[int]) -> None:
    cache.store(ids, _kv_of(len(ids)))


def test_longest_cached_prefix_is_block_aligned_and_leaves_a_token() -> None:
    cache = PrefixCache(max_bytes=1 << 20, block=4)
    ids = list(range(10))
    _store(cache, ids)
    assert cache.longest(ids)[0] == 8
    length, kv = cache.longest(ids[:8])  # 8 tokens: a full 8-token prefix would leave nothing to compute
    assert length == 4
    assert kv[0][0].shape[2] == 4 and kv[0][0].flatten().tolist() == [0, 1, 2, 3]
    assert kv[1][1].flatten().tolist() == [0, -1, -2, -3]
    assert cache.longest(ids + [5])[1][0][0].flatten().tolist() == list(range(8))


def test_a_different_prompt_shares_only_its_common_blocks() -> None:
    cache = PrefixCache(max_bytes=1 << 20, block=4)
    _store(cache, list(range(12)))
    other = list(range(6)) + [99] * 6
    assert cache.longest(other)[0] == 4
    assert cache.longest([7, 7, 7, 7, 7])[0] == 0
    assert cache.misses == 1 and cache.hits == 1


def test_memory_grows_with_the_prompt_not_with_the_number_of_its_prefixes() -> None:
    cache = PrefixCache(max_bytes=1 << 30, block=16)
    _store(cache, list(range(1200)))
    assert len(cache) == 1200 // 16
    assert cache.bytes == (1200 // 16) * BLOCK_BYTES(16)  # 75 blocks, not 75 * 76 / 2
    shared = list(range(640)) + [5000 + i for i in range(640)]
    _store(cache, shared)  # its first 40 blocks are already there
    assert len(cache) == 75 + 40


def test_stored_blocks_are_copies() -> None:
    cache = PrefixCache(max_bytes=1 << 20, block=2)
    marks = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1)
    cache.store(list(range(8)), lambda s, e: [(marks[:, :, s:e], marks[:, :, s:e])])
    marks.zero_()
    assert cache.longest(list(range(7)))[1][0][0].flatten().tolist() == [0, 1, 2, 3, 4, 5]


def test_the_byte_bound_evicts_least_recently_used_leaves_first() -> None:
    block_bytes = BLOCK_BYTES(2)
    cache = PrefixCache(max_bytes=4 * block_bytes, block=2)
    a, b = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10]
    _store(cache, a)  # 3 blocks
    _store(cache, b)  # 2 more: one of a's must go, and it is a's last block, not its root
    assert cache.bytes <= cache.max_bytes and len(cache) == 4
    assert cache.longest(a + [0])[0] == 4
    assert cache.longest(b + [0])[0] == 4
    cache.longest(a + [0])  # a used last: b's deepest block goes next
    _store(cache, [11, 12, 13])
    assert cache.longest(b + [0])[0] == 2
    assert cache.longest(a + [0])[0] == 4


def test_a_prompt_larger_than_the_bound_keeps_its_beginning() -> None:
    cache = PrefixCache(max_bytes=3 * BLOCK_BYTES(4), block=4)
    _store(cache, list(range(100)))
    assert cache.bytes == 3 * BLOCK_BYTES(4)
    assert cache.longest(list(range(100)))[0] == 12


def test_a_zero_bound_caches_nothing() -> None:
    cache = PrefixCache(max_bytes=0, block=4)
    _store(cache, list(range(40)))
    assert len(cache) == 0 and cache.longest(list(range(40)))[0] == 0
