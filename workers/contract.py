"""What every engine offers the worker, and what a generation engine sends back.

One engine per served model, chosen by its adapter's kind (`workers.engines.ENGINES`):

- `BatchEngine` (adapters of kind "batch": logits out) decodes many requests together;
- `SerialEngine` (kind "text": the model streams text itself, remote-code ChatGLM) runs one at a time;
- `EmbeddingEngine` (kind "embed") embeds each request's inputs;
- `ScoringEngine` (kind "classify") classifies texts or scores text pairs.

Tasks pick what to do from the engine's `capabilities` (the same list its heartbeat announces),
never from its class.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from protocol import (
    Capability,
    EmbedJob,
    ErrorCode,
    Feature,
    GenerateJob,
    ModelCard,
    ModelSpec,
    PromptToken,
    ScoreJob,
    TokenLogprob,
    Usage,
)
from workers.sizing import EMBED_SLOTS

FinishReason = Literal["stop", "length"]


class Sink(Protocol):
    """Where one request's results go (an EventPublisher in the worker)."""

    def prompt(self, text: str | None, tokens: tuple[PromptToken, ...] | None) -> None:
        """The prompt's echo and its tokens' logprobs (each when asked for), before any token."""

    def token(self, text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> None: ...

    def done(self, finish_reason: FinishReason, usage: Usage, cumulative_logprob: float | None = None) -> None: ...

    def error(self, code: ErrorCode, message: str, param: str | None = None) -> None: ...

    def keepalive(self) -> None:
        """The request is alive though it has nothing to send (text held back, waiting for room)."""


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage


class Cancelled(Exception):
    """The client went away; generation stopped early."""


class Engine(Protocol):
    """Every engine: a number of slots, counters for the heartbeat, a card, a clean shutdown."""

    capabilities: tuple[Capability, ...]
    slots: int

    @property
    def free_slots(self) -> int:
        """Slots neither busy nor promised (a snapshot, for heartbeats)."""

    def card(self) -> ModelCard:
        """What this model can do here, announced with every heartbeat."""

    def stats(self) -> dict[str, int]:
        """Counters for metrics: at least "running", "slots" and "tokens"."""

    def close(self) -> None:
        """Stop the engine's threads; requests still inside get an error."""


class EngineBase:
    """What the engines share: a card from their capabilities and their adapter's context, and
    one pool thread per slot."""

    capabilities: tuple[Capability, ...]
    adapter: Any  # an adapter of the engine's kind, with a context_length
    unsupported: tuple[Feature, ...] = ()  # request features it cannot give: the gateway refuses them

    @staticmethod
    def pool_slots(spec: ModelSpec) -> int:
        """Task threads the worker needs for this model, known before it is loaded."""
        return spec.slots or 1

    def card(self) -> ModelCard:
        return ModelCard(capabilities=self.capabilities, max_model_len=self.adapter.context_length,
                         engine="transformers", unsupported=self.unsupported)  # fmt: skip


class TakingTurns(EngineBase):
    """Engines whose requests take turns on the model, each run whole (embeddings, classifiers):
    `slots` requests in hand, one computing at a time (`turn()`); the task threads wait theirs.
    Events are published by the tasks themselves: nothing to flush or keep alive."""

    def __init__(self, adapter: Any, slots: int | None = None, on_step_end: Any = None, keepalive: float = 5.0) -> None:
        self.adapter = adapter
        self.slots = slots or EMBED_SLOTS
        self._lock = threading.Lock()  # the model: one request at a time
        self._active = 0
        self.tokens_read = 0

    @staticmethod
    def pool_slots(spec: ModelSpec) -> int:
        return spec.slots or EMBED_SLOTS

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self._active)

    def stats(self) -> dict[str, int]:
        """"tokens" counts the tokens read (these models generate none)."""
        return {"running": self._active, "slots": self.slots, "tokens": self.tokens_read}

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the model for one request (counted as running while it waits and computes)."""
        self._active += 1
        try:
            with self._lock:
                yield
        finally:
            self._active -= 1

    def close(self) -> None:
        pass


class Submitted(Protocol):
    """A request inside a generation engine."""

    cancelled: bool
    finished: threading.Event


class GenerationEngine(Engine, Protocol):
    """Engines with the "chat" / "completions" capabilities."""

    def prompt_ids(self, job: GenerateJob) -> list[int]:
        """Tokenize the job's prompt; raises an AdapterError the client caused (too long, empty...)."""

    def submit_job(self, job: GenerateJob, prompt_ids: list[int], sink: Sink) -> Submitted:
        """Queue the job; its events go to `sink` from the engine's thread."""

    def cancel(self, request: Submitted) -> None:
        """Stop the request soon; its sink gets a 'cancelled' error."""


class EmbedEngine(Engine, Protocol):
    """Engines with the "embeddings" capability."""

    def run(self, job: EmbedJob) -> tuple[tuple[str, ...], int]:
        """(each input's vector as base64 little-endian float32, tokens read)."""


@dataclass(frozen=True, slots=True)
class Scored:
    """What a ScoreEngine answers a ScoreJob."""

    rows: tuple[tuple[float, ...], ...]  # per input row: every output of the model, activated
    labels: tuple[str, ...]  # the outputs' names
    tokens: int  # tokens read


class ScoreEngine(Engine, Protocol):
    """Engines with the "classify" (and for cross-encoders "score") capabilities."""

    def run(self, job: ScoreJob) -> Scored:
        """Each row's activated outputs, the outputs' names, and the tokens read."""
