"""What a worker answers: numbered events on the request's pub/sub channel (`channel_for(id)`).

One `StartEvent`, a `PromptEvent` when the job asked for its prompt back (echo, prompt
logprobs), any number of `TokenEvent`s (and `KeepAliveEvent`s while there is nothing to
send), then exactly one `DoneEvent` or `ErrorEvent` (or `EmbeddingsEvent` for an `EmbedJob`,
`ScoresEvent` for a `ScoreJob`, `TokenizedEvent` for a `TokenizeJob`).
`seq` starts at 0 and grows by one per event, so the receiver can detect a lost event.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from protocol.base import WireModel


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StartEvent(WireModel):
    """A worker took the job and its prompt fits: the request will be answered by `worker`."""

    type: Literal["start"] = "start"
    seq: int
    worker: str
    prompt_tokens: int


class TopLogprob(WireModel):
    token: str
    logprob: float
    bytes: tuple[int, ...]


class TokenLogprob(TopLogprob):
    """One generated token: its log-probability under the model (log-softmax of the raw logits,
    before temperature or penalties) and the `SamplingParams.logprobs` likeliest alternatives."""

    top: tuple[TopLogprob, ...] = ()


class RankedLogprob(WireModel):
    """A token at one prompt position: its log-probability there and its rank among the whole
    vocabulary (1: the likeliest)."""

    id: int
    token: str
    logprob: float
    rank: int


class PromptToken(WireModel):
    """One prompt token; `logprob` and `rank` None for the first (nothing before it predicts it)."""

    id: int
    token: str
    logprob: float | None = None
    rank: int | None = None
    top: tuple[RankedLogprob, ...] = ()  # the likeliest tokens at this position, likeliest first


class PromptEvent(WireModel):
    """The prompt, before the completion: its text (echo) and its tokens' logprobs (prompt
    logprobs, computed in the prefill), each when the job asked for it."""

    type: Literal["prompt"] = "prompt"
    seq: int
    text: str | None = None
    tokens: tuple[PromptToken, ...] | None = None


class TokenEvent(WireModel):
    """New text, and the logprobs of the tokens generated since the last event (when asked for).
    `text` can be empty while tokens are held back (an unfinished character or stop sequence)."""

    type: Literal["token"] = "token"
    seq: int
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None


class KeepAliveEvent(WireModel):
    """The worker is still on the request but has nothing to send yet (text held back while it
    may be the start of a stop sequence, or the request waits for room in the batch).  The
    gateway's idle timer measures the worker's silence, not the text's."""

    type: Literal["alive"] = "alive"
    seq: int


class DoneEvent(WireModel):
    type: Literal["done"] = "done"
    seq: int
    finish_reason: Literal["stop", "length"]
    usage: Usage
    cumulative_logprob: float | None = None  # the generated tokens' logprobs summed, when the job asked


class TokenizedEvent(WireModel):
    """The answer to a TokenizeJob: the token ids (and each one's text, when asked), or the text
    of the ids it was given."""

    type: Literal["tokenized"] = "tokenized"
    seq: int
    tokens: tuple[int, ...] = ()
    token_strs: tuple[str, ...] | None = None
    text: str | None = None
    max_model_len: int


class EmbeddingsEvent(WireModel):
    """The answer to an EmbedJob: each input's vector as little-endian float32, base64-encoded
    (OpenAI's own base64 format), in input order."""

    type: Literal["embeddings"] = "embeddings"
    seq: int
    vectors: tuple[str, ...]
    prompt_tokens: int


class ScoresEvent(WireModel):
    """The answer to a ScoreJob, a value row per input row, in input order: the class
    probabilities ("classify"; the classes' names in `labels`) or the pair's one score ("score")."""

    type: Literal["scores"] = "scores"
    seq: int
    rows: tuple[tuple[float, ...], ...]
    labels: tuple[str, ...] = ()
    prompt_tokens: int


ErrorCode = Literal[
    "model_not_found",
    "context_length_exceeded",
    "invalid_request",
    "expired",
    "cancelled",
    "internal_error",
    "worker_lost",  # written into a kept job's log by a gateway that found its worker dead
    "engine_lost",  # the engine process a worker owns (a llama.cpp / vLLM server) died during the request
]


class ErrorEvent(WireModel):
    type: Literal["error"] = "error"
    seq: int
    code: ErrorCode
    message: str
    param: str | None = None


Event = Annotated[Union[StartEvent, PromptEvent, TokenEvent, KeepAliveEvent, DoneEvent, ErrorEvent, EmbeddingsEvent,
                        ScoresEvent, TokenizedEvent], Field(discriminator="type")]  # fmt: skip
FINAL_EVENTS = (DoneEvent, ErrorEvent, EmbeddingsEvent, ScoresEvent, TokenizedEvent)
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def encode_event(event: Event) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()  # absent fields decode as None


def decode_event(data: bytes | str) -> Event:
    """Parse one event; raises pydantic.ValidationError on anything malformed."""
    return _EVENT_ADAPTER.validate_json(data)
