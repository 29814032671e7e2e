"""Pick the next token from logits according to `SamplingParams`; penalties and logprobs."""

from __future__ import annotations

from collections import Counter

import torch

from workers.protocol import SamplingParams


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A private RNG per request: the same seed gives the same text whatever else runs."""
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed)
    return gen


def apply_penalties(logits: torch.Tensor, counts: Counter[int], params: SamplingParams) -> torch.Tensor:
    """OpenAI's rule: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty,
    counting the tokens generated so far; then logit_bias is added.  Returns a new 1-D tensor."""
    if not counts and not params.logit_bias:
        return logits
    adjusted = logits.float().clone()
    if counts:
        ids = torch.tensor(list(counts), device=logits.device)
        times = torch.tensor(list(counts.values()), device=logits.device, dtype=torch.float32)
        adjusted[ids] -= times * params.frequency_penalty + params.presence_penalty
    if params.logit_bias:
        ids = torch.tensor([i for i, _ in params.logit_bias], device=logits.device)
        adjusted[ids] += torch.tensor([b for _, b in params.logit_bias], device=logits.device)
    return adjusted


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """`logits` is the 1-D row for the last position."""
    if params.greedy or generator is None:
        return int(torch.argmax(logits))
    if logits.device != generator.device:  # per-request generators live on the CPU
        logits = logits.to(generator.device)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly better tokens
        sorted_probs[before >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def logprobs_of(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under the model, and the `top` likeliest (id, logprob)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    alternatives: list[tuple[int, float]] = []
    if top:
        values, ids = torch.topk(logp, min(top, logp.shape[-1]))
        alternatives = list(zip(ids.tolist(), values.tolist()))
    return float(logp[token]), alternatives
