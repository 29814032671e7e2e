"""How much memory a model's caches may use: the models file's bound, else a share of what is
free on the model's device once its weights are loaded."""

from __future__ import annotations

import ctypes

import psutil
import torch

MB = 1 << 20
KV_CACHE_SHARE = 0.3  # of free memory, for the decode batch's keys and values
PREFIX_CACHE_SHARE = 0.1  # for the prefix cache


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device` now (the GPU's free memory, or the host's
    available memory for the CPU)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def budget_bytes(configured_mb: float | None, share: float, device: torch.device) -> int:
    """`configured_mb` in bytes when set, else `share` of the device's free memory."""
    if configured_mb is not None:
        return int(configured_mb * MB)
    return int(share * free_bytes(device))


def _load_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def give_back_free_memory(device: torch.device) -> None:
    """Return the host memory that freed tensors left in the C heap to the operating system.

    A long prefill allocates large activations in the engine thread's malloc arena; once freed,
    glibc keeps most of them (its mmap threshold has grown past their size, and arenas shrink
    only from the top), so the worker's RSS would stay at its peak.  `malloc_trim` hands back
    every free page.  CUDA memory is left to torch's caching allocator."""
    if device.type == "cpu" and _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
