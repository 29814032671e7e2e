"""Log-probabilities as the events carry them, and what a completion asks about its prompt: token
prompts used as given (checked against the vocabulary), the echo of the prompt, and the prompt's
scores from the prefill turned into `PromptToken`s."""

from __future__ import annotations

import torch

from adapters import AdapterError, ModelAdapter
from adapters.base import PromptScores
from adapters.sampling import logprobs_of
from protocol import GenerateJob, PromptToken, RankedLogprob, TokenLogprob, TopLogprob
from protocol.features import prompt_logprobs_param  # noqa: F401  (re-exported for the engines)


class InvalidTokenPrompt(AdapterError):
    param = "prompt"


def token_prompt(prompt: tuple[int, ...], vocab_size: int) -> list[int]:
    """A prompt of token ids, as given; AdapterError (param prompt) for an id outside the vocabulary."""
    bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidTokenPrompt(f"The prompt holds the token id {bad}, outside this model's vocabulary "
                                 f"(0..{vocab_size - 1}).")  # fmt: skip
    return list(prompt)


def echo_text(job: GenerateJob, adapter: ModelAdapter, prompt_ids: list[int]) -> str | None:
    """What an echo sends back: a text prompt as given, a token prompt decoded; None without echo."""
    if not job.echo:
        return None
    return job.prompt if isinstance(job.prompt, str) else adapter.decode(prompt_ids)


def token_logprob(adapter: ModelAdapter, logits: torch.Tensor, token: int, top: int | None) -> TokenLogprob | None:
    """A generated token's logprob entry, with `top` alternatives; None when none was asked for."""
    if top is None:
        return None
    chosen, alternatives = logprobs_of(logits, token, top)
    texts = adapter.token_texts([token, *(i for i, _ in alternatives)])
    entry = lambda text, lp: {"token": text, "logprob": lp, "bytes": tuple(text.encode())}  # noqa: E731
    top_entries = tuple(TopLogprob(**entry(t, lp)) for t, (_, lp) in zip(texts[1:], alternatives))
    return TokenLogprob(**entry(texts[0], chosen), top=top_entries)


def prompt_tokens(adapter: ModelAdapter, ids: list[int], scores: PromptScores) -> tuple[PromptToken, ...]:
    """Each prompt token with its scores (the first has none: nothing before it predicts it)."""
    unique = sorted({*ids, *(t for top in scores.top_ids for t in top)})
    text = dict(zip(unique, adapter.token_texts(unique)))
    tokens = [PromptToken(id=ids[0], token=text[ids[0]])]
    for i, token in enumerate(ids[1:]):
        top = tuple(RankedLogprob(id=t, token=text[t], logprob=lp, rank=k + 1)
                    for k, (t, lp) in enumerate(zip(scores.top_ids[i], scores.top_logprobs[i])))  # fmt: skip
        tokens.append(PromptToken(id=token, token=text[token], logprob=scores.logprobs[i], rank=scores.ranks[i], top=top))
    return tuple(tokens)
