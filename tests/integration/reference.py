"""Independent oracle: what plain transformers `generate` (greedy) says a model answers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Reference:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@lru_cache(maxsize=4)
def _load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.hf_causal import pick_dtype

    # The dtype a worker picks for `dtype: auto` on this machine (bfloat16 on CPUs with native bf16),
    # and the attention kernel it uses (adapters/hf_causal.py: SDPA rounds differently in bf16)
    dtype = pick_dtype("auto", torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    return AutoTokenizer.from_pretrained(model_dir), model.eval()


def greedy(model_dir: Path, *, messages: list[dict] | None = None, prompt: str | None = None,
           max_tokens: int = 16) -> Reference:  # fmt: skip
    import torch

    tokenizer, model = _load(model_dir)
    if messages is not None:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(prompt)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    new = out[0, len(ids):].tolist()
    hit_eos = tokenizer.eos_token_id in new
    if hit_eos:
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    return Reference(
        text=tokenizer.decode(new, skip_special_tokens=True),
        prompt_tokens=len(ids),
        completion_tokens=len(new),
        finish_reason="stop" if hit_eos else "length",
    )


def token_ids(model_dir: Path, prompt: str) -> list[int]:
    """The prompt's token ids as a worker tokenizes a completion prompt."""
    tokenizer, _ = _load(model_dir)
    return tokenizer.encode(prompt)


def prompt_logprobs(model_dir: Path, ids: list[int]) -> list[list[float]]:
    """Row i: the log-softmax over the vocabulary after ids[: i + 1] (what predicts ids[i + 1]),
    from one plain forward pass over the whole prompt."""
    import torch

    _, model = _load(model_dir)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).tolist()
