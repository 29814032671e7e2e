"""How big a model's batch is: how many requests a worker decodes together when the models file
sets no `slots`, and how many prompt tokens one step may prefill.

    slots = min(cap, max(1, kv_budget_tokens // REQUEST_TOKENS))

`cap` is what the device's compute can use (a batch of 64 rows gives a CPU about all the throughput
it has; a GPU keeps gaining up to a few hundred), `kv_budget_tokens` the token positions the
model's KV cache may hold (`kv_cache_mb`, else 30 % of the memory free once the weights are
loaded, over the bytes one token takes in every layer's keys and values), and `REQUEST_TOKENS` a
typical request's prompt and reply.  The bound is soft: admission still counts each request's own
prompt + max_tokens, so a request that does not fit beside the running ones waits (in the worker,
then in the queue), and one that could never fit is refused before it starts.

The worker's pool is sized before the models load (Celery creates it first), so `pool_slots`
uses the device's cap; when memory makes the model's slots fewer, the surplus tasks wait in the
engine like any request waiting for KV room.
"""

from __future__ import annotations

import torch

from protocol import ModelSpec

CPU_SLOTS = 64
CUDA_SLOTS = 256
REQUEST_TOKENS = 1024  # prompt + reply of a typical request, for sizing only
EMBED_SLOTS = 4  # embedding requests take turns on the model; a few in hand keep it busy


def device_cap(device: str) -> int:
    """Most rows worth batching on `device` ("auto", "cpu", "cuda", "cuda:1", ...)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return CUDA_SLOTS if device.startswith("cuda") else CPU_SLOTS


def batch_slots(spec: ModelSpec, kv_budget_tokens: int | None, device: str) -> int:
    """The slots of a batch-decoded model: the models file's, else the formula above."""
    if spec.slots is not None:
        return spec.slots
    cap = device_cap(device)
    if kv_budget_tokens is None:  # no KV cache (model-free adapters)
        return cap
    return min(cap, max(1, kv_budget_tokens // REQUEST_TOKENS))


CPU_PREFILL_CHUNK = 256  # ~0.1 s of prefill for a 135M model on two cores: the most a step stalls the others
CUDA_PREFILL_CHUNK = 2048


def prefill_tokens(spec: ModelSpec, device: str) -> int:
    """Most prompt tokens (rows x columns) computed in one step; a longer prompt is prefilled in
    chunks of this size, one per step, with every running request decoding a token in between."""
    if spec.prefill_chunk is not None:
        return spec.prefill_chunk
    return CUDA_PREFILL_CHUNK if device_cap(device) == CUDA_SLOTS else CPU_PREFILL_CHUNK
