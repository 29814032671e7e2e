"""Batch sizes from the model and memory: slots when the models file sets none, and the prefill chunk."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hf_causal import HfCausalAdapter
from protocol.models_file import ModelSpec
from workers.batch_engine import BatchEngine
from workers.embed_engine import EmbeddingEngine
from workers.sizing import (
    CPU_PREFILL_CHUNK,
    CPU_SLOTS,
    CUDA_PREFILL_CHUNK,
    CUDA_SLOTS,
    EMBED_SLOTS,
    REQUEST_TOKENS,
    batch_slots,  # fmt: skip
    prefill_tokens,
)


def spec(**fields) -> ModelSpec:
    return ModelSpec(name="m", adapter="echo", **fields)


@pytest.mark.parametrize(
    ("fields", "budget", "device", "slots"),
    [
        ({"slots": 3}, 10**9, "cpu", 3),  # the models file decides
        ({}, None, "cpu", CPU_SLOTS),  # no KV cache: the device's cap
        ({}, None, "cuda:1", CUDA_SLOTS),
        ({}, 10**9, "cpu", CPU_SLOTS),  # memory to spare: the cap
        ({}, 10**9, "cuda", CUDA_SLOTS),
        ({}, 9 * REQUEST_TOKENS + 5, "cpu", 9),  # memory binds: whole typical requests
        ({}, 10, "cuda", 1),  # never none
    ],
)
def test_unset_slots_are_the_devices_cap_within_the_kv_budget(fields, budget, device, slots) -> None:
    assert batch_slots(spec(**fields), budget, device) == slots


def test_the_prefill_chunk_defaults_by_device_and_is_the_models_files_when_set() -> None:
    assert prefill_tokens(spec(), "cpu") == CPU_PREFILL_CHUNK
    assert prefill_tokens(spec(), "cuda:0") == CUDA_PREFILL_CHUNK
    assert prefill_tokens(spec(prefill_chunk=64), "cuda") == 64


def test_the_pool_is_sized_before_loading_to_the_cap_or_the_models_files_slots() -> None:
    assert BatchEngine.pool_slots(spec(device="cpu")) == CPU_SLOTS
    assert BatchEngine.pool_slots(spec(device="cpu", slots=5)) == 5
    assert EmbeddingEngine.pool_slots(spec()) == EMBED_SLOTS


def test_a_loaded_model_gets_the_slots_its_kv_budget_holds(tiny_model_dir: Path, tmp_path: Path, make_engine) -> None:
    bounded = ModelSpec(name="tiny", path=tiny_model_dir, device="cpu", dtype="float32", kv_cache_mb=1)
    adapter = HfCausalAdapter(bounded, tmp_path)
    adapter.load()
    expected = (1 << 20) // adapter.kv_bytes_per_token // REQUEST_TOKENS
    assert 1 <= expected < CPU_SLOTS  # the tiny model: 256 bytes a token, 1 MB: 4096 tokens
    assert make_engine(adapter).slots == expected
    assert make_engine(adapter, slots=40).slots == 40  # set explicitly: as asked
