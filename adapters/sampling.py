"""Pick the next token from logits according to `SamplingParams`; penalties and logprobs (of
generated tokens, and of a prompt's positions)."""

from __future__ import annotations

from collections import Counter

import torch

from adapters.base import PromptScores
from protocol import SamplingParams

SEED_RANGE = 1 << 64


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A private RNG per request: the same seed gives the same text whatever else runs."""
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed % SEED_RANGE)  # any integer: the generator takes 64 bits
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


def _greedy(logits: torch.Tensor) -> int:
    return int(torch.argmax(torch.nan_to_num(logits.float(), nan=float("-inf"))))


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """`logits` is the 1-D row for the last position.  Computed in float32; a distribution that
    degenerates anyway (non-finite logits, no mass left) gives the likeliest token instead."""
    if params.greedy or generator is None:
        return _greedy(logits)
    if logits.device != generator.device:  # per-request generators live on the CPU
        logits = logits.to(generator.device)
    scaled = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly better tokens
        drop = before >= params.top_p
        drop[0] = False  # the likeliest token always stays, however small top_p is
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
        return _greedy(logits)
    return int(torch.multinomial(probs, 1, generator=generator))


def logprobs_of(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under the model, and the `top` likeliest (id, logprob)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    alternatives: list[tuple[int, float]] = []
    if top:
        values, ids = torch.topk(logp, min(top, logp.shape[-1]))
        alternatives = list(zip(ids.tolist(), values.tolist()))
    return float(logp[token]), alternatives


def score_positions(logits: torch.Tensor, targets: torch.Tensor, top: int) -> PromptScores:
    """How likely each of `targets` [T] was under `logits` [T, vocab] (position t's logits
    predict targets[t]): its logprob, its rank, and the `top` likeliest tokens there."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, targets.unsqueeze(1))  # [T, 1]
    ranks = (logp > chosen).sum(dim=-1) + 1
    scores = PromptScores(logprobs=chosen.squeeze(1).tolist(), ranks=ranks.tolist())
    if top:
        values, ids = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)
        scores.top_ids, scores.top_logprobs = ids.tolist(), values.tolist()
    else:
        scores.top_ids, scores.top_logprobs = [[] for _ in scores.logprobs], [[] for _ in scores.logprobs]
    return scores
