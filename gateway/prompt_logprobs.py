"""The prompt's part of a generation's output, and best_of's choice among candidates.

A `PromptEvent` carries the prompt's tokens with their logprobs (the first token has none:
nothing before it predicts it).  They are shown two ways: OpenAI's legacy echo with logprobs,
where the prompt's tokens lead the choice's `logprobs` (null logprob and top_logprobs first), and
vLLM's `prompt_logprobs` extension, a list with None first and then, per position,
{token id: {logprob, rank, decoded_token}} for the prompt's token and the likeliest ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from gateway.openai_responses import PromptLogprob, PromptLogprobs
from protocol import PromptToken, TokenLogprob

# One entry of a completion's logprobs: the token, its logprob and the likeliest alternatives
# (both None for an echoed prompt's first token).
Row = tuple[str, float | None, dict[str, float] | None]


def prompt_rows(tokens: Sequence[PromptToken], top: int) -> list[Row]:
    """The prompt's tokens as the leading entries of a completion's logprobs."""
    return [(t.token, None, None) if t.logprob is None else (t.token, t.logprob, {a.token: a.logprob for a in t.top[:top]})
            for t in tokens]  # fmt: skip


def token_rows(entries: Sequence[TokenLogprob]) -> list[Row]:
    return [(e.token, e.logprob, {t.token: t.logprob for t in e.top}) for e in entries]


def vllm_prompt_logprobs(tokens: Sequence[PromptToken], top: int) -> PromptLogprobs:
    """vLLM's shape: per position the prompt's token and the `top` likeliest, keyed by token id."""
    out: PromptLogprobs = []
    for token in tokens:
        if token.logprob is None:
            out.append(None)
            continue
        entry = {str(token.id): PromptLogprob(logprob=token.logprob, rank=token.rank, decoded_token=token.token)}
        for alt in token.top[:top]:
            entry.setdefault(str(alt.id), PromptLogprob(logprob=alt.logprob, rank=alt.rank, decoded_token=alt.token))
        out.append(entry)
    return out


class Candidate(Protocol):
    index: int
    cumulative_logprob: float | None


C = TypeVar("C", bound=Candidate)


def best_of(candidates: Sequence[C], n: int, per_prompt: int) -> list[C]:
    """The `n` likeliest (by cumulative logprob) of each prompt's `per_prompt` candidates, in
    prompt order, renumbered as the response's choices; ties keep the candidates' order."""
    chosen: list[C] = []
    for start in range(0, len(candidates), per_prompt):
        group = candidates[start : start + per_prompt]
        ranked = sorted(group, key=lambda c: -c.cumulative_logprob if c.cumulative_logprob is not None else float("inf"))
        chosen.extend(ranked[:n])
    for index, candidate in enumerate(chosen):
        candidate.index = index
    return chosen
