"""In-process baseline: plain transformers `generate` on the same model and prompts, no server."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.prompts import messages


@dataclass
class Baseline:
    single_tokens_per_s: float
    ttft_p50_ms: float
    batch_tokens_per_s: dict[int, float]


def load(folder: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    return tokenizer, model


def count_tokens(tokenizer, text: str) -> int:
    """The one yardstick for every server: re-tokenize the text it returned."""
    return len(tokenizer.encode(text, add_special_tokens=False))


def _prompts(tokenizer, n: int) -> list[str]:
    return [tokenizer.apply_chat_template(messages(i), add_generation_prompt=True, tokenize=False) for i in range(n)]


@torch.inference_mode()
def _generate(tokenizer, model, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    elapsed = time.perf_counter() - started
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return elapsed, sum(count_tokens(tokenizer, t) for t in texts)


def measure(tokenizer, model, max_tokens: int, batch_sizes: list[int], singles: int = 4) -> Baseline:
    _generate(tokenizer, model, _prompts(tokenizer, 1), 4)  # warm-up
    ttfts, seconds, tokens = [], 0.0, 0
    for prompt in _prompts(tokenizer, singles):
        ttfts.append(_generate(tokenizer, model, [prompt], 1)[0] * 1000)
        elapsed, produced = _generate(tokenizer, model, [prompt], max_tokens)
        seconds, tokens = seconds + elapsed, tokens + produced
    batches = {}
    for size in batch_sizes:
        elapsed, produced = _generate(tokenizer, model, _prompts(tokenizer, size), max_tokens)
        batches[size] = produced / elapsed
    # singles=0 measures the static batches alone
    return Baseline(tokens / seconds if seconds else 0.0, statistics.median(ttfts) if ttfts else 0.0, batches)
