"""PrefixCache bookkeeping: block-aligned prefixes, one token always left to compute, LRU bound."""

from __future__ import annotations

import torch

from adapters.prefix_cache import PrefixCache


def _kv(tokens: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    marks = torch.arange(tokens, dtype=torch.float32).view(1, 1, tokens, 1)
    return [(marks.clone(), -marks.clone()) for _ in range(layers)]


def test_longest_cached_prefix_is_block_aligned_and_leaves_a_token() -> None:
    cache = PrefixCache(block=4)
    ids = list(range(10))
    cache.store(ids, _kv(10))
    assert cache.longest(ids) == (8, cache.longest(ids)[1])
    length, kv = cache.longest(ids[:8])  # 8 tokens: a full 8-token prefix would leave nothing to compute
    assert length == 4
    assert kv[0][0].shape[2] == 4 and kv[0][0].flatten().tolist() == [0, 1, 2, 3]
    assert kv[1][1].flatten().tolist() == [0, -1, -2, -3]


def test_a_different_prompt_shares_only_its_common_blocks() -> None:
    cache = PrefixCache(block=4)
    cache.store(list(range(12)), _kv(12))
    other = list(range(6)) + [99] * 6
    assert cache.longest(other)[0] == 4
    assert cache.longest([7, 7, 7, 7, 7])[0] == 0
    assert cache.misses == 1 and cache.hits == 1


def test_stored_prefixes_are_copies_and_the_oldest_go_first() -> None:
    cache = PrefixCache(block=2, capacity=3)
    kv = _kv(8)
    cache.store([1, 2, 3, 4, 5, 6, 7, 8], kv)  # prefixes of 2, 4, 6 tokens
    kv[0][0].zero_()
    assert cache.longest([1, 2, 3, 4, 5, 6, 7])[1][0][0].flatten().tolist() == [0, 1, 2, 3, 4, 5]
    cache.store([9, 9, 9], _kv(3))  # a fourth entry pushes out the least recently used ([1, 2])
    assert cache.longest([1, 2, 0])[0] == 0
    assert cache.longest([9, 9, 0])[0] == 2
