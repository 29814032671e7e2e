"""What a worker announces about each model it serves, with every heartbeat.

The gateway reads the cards to answer a request the model cannot serve (a chat request to an
embeddings model) with a 400 before queueing anything, and lists them in `/v1/models`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.base import WireModel

Capability = Literal["chat", "completions", "embeddings", "classify", "score"]
GENERATES: tuple[Capability, ...] = ("chat", "completions")
EMBEDS: tuple[Capability, ...] = ("embeddings",)
# Sequence classifiers: every one classifies (/v1/classify); one with a single output (a
# cross-encoder) also scores text pairs (/v1/score, /v1/rerank).
CLASSIFIES: tuple[Capability, ...] = ("classify",)
SCORES: tuple[Capability, ...] = ("classify", "score")
# What a generation request may ask for beyond text in, text out; an engine that cannot give one
# lists it in its card's `unsupported`, and the gateway refuses such requests (400 naming the
# request's parameter, protocol.features) before queueing them.
Feature = Literal["logprobs", "prompt_logprobs", "best_of", "token_prompt", "echo", "constraint", "logit_bias",
                  "seed", "top_k", "penalties"]  # fmt: skip
EngineKind = Literal["transformers", "llama-cpp", "vllm"]


class ModelCard(WireModel):
    """One model as a worker serves it."""

    capabilities: tuple[Capability, ...] = Field(min_length=1)
    max_model_len: int | None = Field(None, ge=1, description="prompt + completion tokens the model takes")
    engine: str | None = Field(None, description="what runs the model: transformers, llama-cpp, vllm")
    unsupported: tuple[Feature, ...] = Field((), description="request features this engine cannot give")

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


class ModelFailure(WireModel):
    """A model a worker was asked to serve but could not load: why, and when it last said so."""

    reason: str
    at: float = Field(description="unix time (Redis' clock) of the worker's last heartbeat saying so")
