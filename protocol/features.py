"""Which engine features a generation job asks for, each with the request parameter that asked:
checked against a model's card by the gateway (before queueing) and by the engine (in case a card
was stale), so a request an engine cannot serve fully is refused, never silently served in part."""

from __future__ import annotations

from collections.abc import Iterable

from protocol.cards import Feature
from protocol.jobs import GenerateJob


def prompt_logprobs_param(job: GenerateJob) -> str:
    """The request parameter that asked for prompt logprobs (for an error naming it)."""
    return "echo" if job.echo and job.params.logprobs is not None else "prompt_logprobs"


def requested_features(job: GenerateJob) -> dict[Feature, str]:
    """Feature -> the parameter that asked for it, for every feature `job` uses."""
    params, used = job.params, {}  # type: dict[Feature, str]
    if params.prompt_logprobs is not None:
        used["prompt_logprobs"] = prompt_logprobs_param(job)
    if params.cumulative_logprob:
        used["best_of"] = "best_of"
    if params.logprobs is not None:
        used["logprobs"] = "logprobs"
    if isinstance(job.prompt, tuple):
        used["token_prompt"] = "prompt"
    if job.echo:
        used["echo"] = "echo"
    if job.constraint is not None:
        used["constraint"] = job.constraint.param
    if params.logit_bias:
        used["logit_bias"] = "logit_bias"
    if params.seed is not None:
        used["seed"] = "seed"
    if params.top_k is not None:
        used["top_k"] = "top_k"
    if params.presence_penalty or params.frequency_penalty:
        used["penalties"] = "presence_penalty" if params.presence_penalty else "frequency_penalty"
    return used


def first_unsupported(job: GenerateJob, unsupported: Iterable[Feature]) -> tuple[Feature, str] | None:
    """The first feature `job` uses that is in `unsupported`, with its parameter; None if none."""
    refused = set(unsupported)
    return next(((f, p) for f, p in requested_features(job).items() if f in refused), None)
