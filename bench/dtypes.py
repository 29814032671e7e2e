"""float32 against bfloat16, in-process (plain transformers `generate`, same prompts, greedy):
speed at one stream and static batches, and how often bf16 gives float32's exact reply.

    python -m bench --dtypes [--max-tokens 64]
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch

from bench import baseline as base


@torch.inference_mode()
def _greedy_ids(tokenizer, model, prompts: list[str], max_tokens: int) -> list[list[int]]:
    replies = []
    for prompt in prompts:  # one at a time: no padding, each reply the model's own
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        replies.append(new[: new.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in new else new)
    return replies


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def bench_dtypes(folder: Path, max_tokens: int, sizes: list[int]) -> None:
    prompts = None
    rows, replies = [], {}
    for dtype in (torch.float32, torch.bfloat16):
        tokenizer, model = base.load(folder, dtype)
        prompts = prompts or base._prompts(tokenizer, 16)
        measured = base.measure(tokenizer, model, max_tokens, sizes)
        replies[dtype] = _greedy_ids(tokenizer, model, prompts, max_tokens)
        rows.append((dtype, measured))
        del model
    cpu = platform.processor() or platform.machine()
    print(f"\n### dtypes, in-process transformers generate, {datetime.date.today()}, {cpu}, "
          f"{torch.get_num_threads()} threads, {max_tokens} new tokens, greedy\n")  # fmt: skip
    print("| dtype | 1 stream tok/s | " + " | ".join(f"static {n} tok/s" for n in sizes) + " | TTFT p50 ms |")
    print("|---|---:|" + "---:|" * len(sizes) + "---:|")
    for dtype, m in rows:
        batches = " | ".join(f"{m.batch_tokens_per_s[n]:.1f}" for n in sizes)
        print(f"| {str(dtype).removeprefix('torch.')} | {m.single_tokens_per_s:.1f} | {batches} | {m.ttft_p50_ms:.0f} |")
    a, b = replies[torch.float32], replies[torch.bfloat16]
    same = sum(x == y for x, y in zip(a, b))
    prefix = sum(_common_prefix(x, y) for x, y in zip(a, b)) / sum(len(x) for x in a)
    first = sum(bool(x and y and x[0] == y[0]) for x, y in zip(a, b))
    print(f"\ngreedy agreement, bf16 vs float32 on the {len(a)} bench prompts: {same}/{len(a)} replies identical, "
          f"{first}/{len(a)} same first token, {prefix:.0%} of float32's tokens before the first difference")  # fmt: skip
