"""What the gateway asks of a worker: one job per request, with typed sampling parameters.

A request travels as one `GenerateJob` or `EmbedJob`, the Celery task's single argument.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from protocol.base import WireModel
from protocol.cards import Capability
from protocol.names import TASK_EMBED, TASK_GENERATE, TASK_TOKENIZE

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"  # how models are asked to write calls

OPENAI_TEMPERATURE = 1.0  # what OpenAI uses when a request says nothing
OPENAI_TOP_P = 1.0
SAMPLING_EPS = 1e-5  # a temperature or top_p below this samples the likeliest token: greedy


class SamplingParams(WireModel):
    """How to pick tokens.  Ranges follow OpenAI's API.

    `temperature` / `top_p` left as None mean "the model's default" (models file, then the
    model's generation_config, then OpenAI's 1.0): the worker fills them in with `resolved()`.
    """

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, description="sample only among the k likeliest tokens")
    max_tokens: int | None = Field(None, ge=0, description="0: nothing is generated (the prompt is only scored)")
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logprobs: int | None = Field(None, ge=0, le=20, description="None: none; k: the chosen token's and k alternatives'")
    logit_bias: tuple[tuple[int, float], ...] = Field((), description="(token id, bias -100..100) added to the logits")
    prompt_logprobs: int | None = Field(None, ge=0, le=20, description="None: none; k: each prompt token's logprob "
                                        "(after the first), its rank and the k likeliest alternatives, from the prefill")
    cumulative_logprob: bool = Field(False, description="report the sum of the generated tokens' logprobs in the done "
                                     "event (best_of ranks its candidates by it)")

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


class ToolCall(WireModel):
    """A function call the assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


class ChatMessage(WireModel):
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


class Constraint(WireModel):
    """What the output must match, as a grammar the worker compiles against its tokenizer and
    applies as a token mask (grammar-constrained decoding).  The gateway builds and validates it
    (gateway/structured.py), so a bad schema is refused before it is queued."""

    grammar: str = Field(min_length=1, description="llguidance's grammar format: its JSON grammar list "
                         "(JSON schemas, Lark with %json), as llguidance.LLMatcher.grammar_from_* build it")
    kind: str = Field(description="what asked for it, for logs and errors: json_schema, json_object, regex, "
                      "choice, grammar, tool_call")
    param: str = Field(description="the request parameter it came from; errors name it")


class GenerateJob(WireModel):
    """One request for one model.  Exactly one of `messages` (chat) or `prompt` (completion: text,
    or token ids used as given)."""

    TASK: ClassVar[str] = TASK_GENERATE
    request_id: str
    model: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | tuple[int, ...] | None = None
    echo: bool = Field(False, description="send the prompt back (a PromptEvent's text) before the completion")
    params: SamplingParams = SamplingParams()
    tools: tuple[dict[str, Any], ...] | None = Field(None, description="OpenAI function definitions (name, description, parameters)")
    tool_choice: str | None = Field(None, description="auto, required, or the name of the function to call")
    constraint: Constraint | None = Field(None, description="the grammar the output must match (None: free text)")
    expires_at: float = Field(description="unix time after which the work is worthless")
    log_ttl: int | None = Field(None, ge=1, description="a kept job: its events also go to its replay log, which "
                                "lives this many seconds after the last event, and the work goes on when nobody "
                                "listens (the client may resume).  None: no log, and the work stops once its "
                                "listener is gone")

    @property
    def kept(self) -> bool:
        return self.log_ttl is not None

    def model_post_init(self, __context: object) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a job carries either messages or a prompt")

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at

    @property
    def capability(self) -> Capability:
        """What the model must be able to do to serve this job."""
        return "chat" if self.messages is not None else "completions"


class TokenizeJob(WireModel):
    """Tokenize a prompt or a chat (`tokens` None), or detokenize `tokens`, with a model's tokenizer."""

    TASK: ClassVar[str] = TASK_TOKENIZE
    request_id: str
    model: str
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    tokens: tuple[int, ...] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False
    expires_at: float

    def model_post_init(self, __context: object) -> None:
        if sum(x is not None for x in (self.prompt, self.messages, self.tokens)) != 1:
            raise ValueError("a tokenize job carries exactly one of prompt, messages or tokens")

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at

    @property
    def capability(self) -> Capability:
        return "chat" if self.messages is not None else "completions"


class EmbedJob(WireModel):
    """Embed every input (text, or token ids) with one embedding model."""

    TASK: ClassVar[str] = TASK_EMBED
    request_id: str
    model: str
    inputs: tuple[str | tuple[int, ...], ...] = Field(min_length=1)
    dimensions: int | None = Field(None, ge=1)
    expires_at: float
    log_ttl: int | None = Field(None, ge=1, description="as GenerateJob's: a kept job's result goes to its log too")

    @property
    def kept(self) -> bool:
        return self.log_ttl is not None

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at

    @property
    def capability(self) -> Capability:
        return "embeddings"
