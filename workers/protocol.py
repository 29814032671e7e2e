"""The wire protocol between gateway and workers, imported by both sides.

Depends on pydantic only.  A request travels as one `GenerateJob` (the Celery task's single
argument); its results come back as numbered events on the pub/sub channel `channel_for(id)`:
one `StartEvent`, any number of `TokenEvent`s (and `KeepAliveEvent`s while there is nothing to
send), then exactly one `DoneEvent` or `ErrorEvent`.
`seq` starts at 0 and grows by one per event, so the receiver can detect a lost event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

TASK_GENERATE = "queuechat.generate"
TASK_EMBED = "queuechat.embed"
KEY_PREFIX = "queuechat:"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"  # how models are asked to write calls


def channel_for(request_id: str) -> str:
    """The pub/sub channel carrying the events of one request."""
    return f"{KEY_PREFIX}events:{request_id}"


def cancel_key_for(request_id: str) -> str:
    """A key the gateway sets when the client left; the worker stops generating for it."""
    return f"{KEY_PREFIX}cancel:{request_id}"


def live_workers_key(model: str) -> str:
    """Sorted set of worker ids serving `model`, scored by their last heartbeat (unix time)."""
    return f"{KEY_PREFIX}live:{model}"


def slots_key(model: str) -> str:
    """Hash worker id -> "free/total" batch slots for `model`, refreshed with every heartbeat."""
    return f"{KEY_PREFIX}slots:{model}"


def stats_key(model: str) -> str:
    """Hash worker id -> JSON engine counters for `model` ({"running", "slots", "tokens"}),
    refreshed with every heartbeat; the gateway's /metrics reads it."""
    return f"{KEY_PREFIX}stats:{model}"


MODELS_SEEN_KEY = f"{KEY_PREFIX}models"  # set of every model name a worker has announced

# Keys that live as long as the deployment: the worker registry, and kombu's per-queue bindings
# (one set per queue, bounded by the models file).  Every other key must carry an expiry.
PERMANENT_KEY_PREFIXES = (f"{KEY_PREFIX}live:", f"{KEY_PREFIX}slots:", f"{KEY_PREFIX}stats:", MODELS_SEEN_KEY,
                          "_kombu.binding")  # fmt: skip


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


OPENAI_TEMPERATURE = 1.0  # what OpenAI uses when a request says nothing
OPENAI_TOP_P = 1.0
SAMPLING_EPS = 1e-5  # a temperature or top_p below this samples the likeliest token: greedy


class SamplingParams(_Frozen):
    """How to pick tokens.  Ranges follow OpenAI's API.

    `temperature` / `top_p` left as None mean "the model's default" (models file, then the
    model's generation_config, then OpenAI's 1.0): the worker fills them in with `resolved()`.
    """

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, description="sample only among the k likeliest tokens")
    max_tokens: int | None = Field(None, ge=1)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logprobs: int | None = Field(None, ge=0, le=20, description="None: none; k: the chosen token's and k alternatives'")
    logit_bias: tuple[tuple[int, float], ...] = Field((), description="(token id, bias -100..100) added to the logits")

    @property
    def greedy(self) -> bool:
        """Only the likeliest token can come out: temperature or top_p (once resolved) is 0 or
        so small that dividing by it would overflow."""
        return (self.temperature is not None and self.temperature < SAMPLING_EPS) or (
            self.top_p is not None and self.top_p < SAMPLING_EPS
        )

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    def resolved(self, temperature: float | None = None, top_p: float | None = None) -> SamplingParams:
        """A copy whose unset temperature / top_p take the given defaults, else OpenAI's."""
        return self.model_copy(
            update={
                "temperature": _first_set(self.temperature, temperature, OPENAI_TEMPERATURE),
                "top_p": _first_set(self.top_p, top_p, OPENAI_TOP_P),
            }
        )


def _first_set(*values: float | None) -> float:
    return next(v for v in values if v is not None)


class ToolCall(_Frozen):
    """A function call the assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


class ChatMessage(_Frozen):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] | None = None  # assistant messages
    tool_call_id: str | None = None  # tool messages: which call this answers


def with_system_text(messages: Sequence[ChatMessage], text: str) -> tuple[ChatMessage, ...]:
    """`text` appended to the first system message, or a system message put first (instructions
    the gateway or an adapter adds: response_format, tools)."""
    if messages and messages[0].role in ("system", "developer"):
        first = messages[0].model_copy(update={"content": f"{messages[0].content}\n\n{text}"})
        return (first, *messages[1:])
    return (ChatMessage(role="system", content=text), *messages)


class GenerateJob(_Frozen):
    """One request for one model.  Exactly one of `messages` (chat) or `prompt` (completion)."""

    request_id: str
    model: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    params: SamplingParams = SamplingParams()
    tools: tuple[dict[str, Any], ...] | None = Field(None, description="OpenAI function definitions (name, description, parameters)")
    tool_choice: str | None = Field(None, description="auto, required, or the name of the function to call")
    expires_at: float = Field(description="unix time after which the work is worthless")

    def model_post_init(self, __context: object) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a job carries either messages or a prompt")

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at


class EmbedJob(_Frozen):
    """Embed every input (text, or token ids) with one embedding model."""

    request_id: str
    model: str
    inputs: tuple[str | tuple[int, ...], ...] = Field(min_length=1)
    dimensions: int | None = Field(None, ge=1)
    expires_at: float

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at


class Usage(_Frozen):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StartEvent(_Frozen):
    """A worker took the job and its prompt fits: the request will be answered by `worker`."""

    type: Literal["start"] = "start"
    seq: int
    worker: str
    prompt_tokens: int


class TopLogprob(_Frozen):
    token: str
    logprob: float
    bytes: tuple[int, ...]


class TokenLogprob(TopLogprob):
    """One generated token: its log-probability under the model (log-softmax of the raw logits,
    before temperature or penalties) and the `SamplingParams.logprobs` likeliest alternatives."""

    top: tuple[TopLogprob, ...] = ()


class TokenEvent(_Frozen):
    """New text, and the logprobs of the tokens generated since the last event (when asked for).
    `text` can be empty while tokens are held back (an unfinished character or stop sequence)."""

    type: Literal["token"] = "token"
    seq: int
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None


class KeepAliveEvent(_Frozen):
    """The worker is still on the request but has nothing to send yet (text held back while it
    may be the start of a stop sequence, or the request waits for room in the batch).  The
    gateway's idle timer measures the worker's silence, not the text's."""

    type: Literal["alive"] = "alive"
    seq: int


class DoneEvent(_Frozen):
    type: Literal["done"] = "done"
    seq: int
    finish_reason: Literal["stop", "length"]
    usage: Usage


class EmbeddingsEvent(_Frozen):
    """The answer to an EmbedJob: each input's vector as little-endian float32, base64-encoded
    (OpenAI's own base64 format), in input order."""

    type: Literal["embeddings"] = "embeddings"
    seq: int
    vectors: tuple[str, ...]
    prompt_tokens: int


ErrorCode = Literal[
    "model_not_found",
    "context_length_exceeded",
    "invalid_request",
    "expired",
    "cancelled",
    "internal_error",
]


class ErrorEvent(_Frozen):
    type: Literal["error"] = "error"
    seq: int
    code: ErrorCode
    message: str
    param: str | None = None


Event = Annotated[Union[StartEvent, TokenEvent, KeepAliveEvent, DoneEvent, ErrorEvent, EmbeddingsEvent],
                  Field(discriminator="type")]  # fmt: skip
FINAL_EVENTS = (DoneEvent, ErrorEvent, EmbeddingsEvent)
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def encode_event(event: Event) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()  # absent fields decode as None


def decode_event(data: bytes | str) -> Event:
    """Parse one event; raises pydantic.ValidationError on anything malformed."""
    return _EVENT_ADAPTER.validate_json(data)
