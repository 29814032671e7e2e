"""OpenAI request models (names as in openapi.json) and their translation into a `GenerateJob`.

Unknown fields are ignored, as OpenAI's own server does; fields we do not implement yet are
rejected with a 400 naming them, rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from abc import abstractmethod
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from gateway.errors import InvalidRequest
from gateway.jobs import metadata_of
from gateway.keep import Keep
from gateway.reply import Format, Generation, Reply
from gateway.settings import GatewaySettings
from gateway.structured import StructuredFields, forced_call, only_one
from gateway.tool_types import (
    ChatCompletionTool,
    NamedToolChoice,
    ResponseFormat,
    ToolCallIn,
    ToolChoice,
    choice_name,
)
from protocol import ChatMessage, Constraint, EmbedJob, GenerateJob, SamplingParams, ToolCall, with_system_text

MAX_STOP_SEQUENCES = 4


MAX_CHOICES = 64  # n times the number of prompts: each choice is a job of its own

# Not implemented; accepted only at these neutral values.
_NEUTRAL_VALUES: dict[str, Any] = {
    "functions": None,
    "function_call": None,
    "best_of": 1,
    "suffix": None,
    "audio": None,
    "modalities": ["text"],
    "prediction": None,
    "web_search_options": None,
}


class TextContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatCompletionRequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatCompletionRequestMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidRequest("A 'tool' message needs the 'tool_call_id' it answers.", param="messages")
        if self.tool_calls and self.role != "assistant":
            raise InvalidRequest("Only 'assistant' messages carry 'tool_calls'.", param="messages")
        return self

    def to_message(self) -> ChatMessage:
        calls = tuple(ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                      for c in self.tool_calls or ())  # fmt: skip
        return ChatMessage(role=self.role, content=self.text(), tool_calls=calls or None, tool_call_id=self.tool_call_id)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


def unencodable_text(value: Any) -> str | None:
    """Where in a parsed JSON body a string cannot be encoded as UTF-8 (a lone surrogate such as
    "\\ud800", which JSON can spell but no tokenizer takes), as a parameter path; None if nowhere.
    Iterative, so a deeply nested body cannot exhaust the stack."""
    todo: list[tuple[Any, str]] = [(value, "")]
    while todo:
        item, path = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(item, dict):
            todo.extend((k, path or "body") for k in item)  # a key is text too
            todo.extend((v, f"{path}.{k}" if path else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return None


class _Request(BaseModel):
    """What every request body shares: unknown fields are ignored, text must be valid Unicode."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if (where := unencodable_text(data)) is not None:
            raise InvalidRequest(f"Invalid value for '{where}': the text holds a lone surrogate (such as \\ud800), "
                                 "which is not valid Unicode.", param=where)  # fmt: skip
        return data


class _GenerationRequest(StructuredFields, _Request):
    """Fields shared by chat and completions requests (the structured-output extensions too)."""

    model: Annotated[str, Field(min_length=1)]
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="extension (as vLLM): sample among the k likeliest; -1 or 0: off")
    max_tokens: int | None = Field(None, ge=1)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 63) - 1, description="int64, as OpenAI's")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=300)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    user: str | None = None
    prompt_logprobs: int | None = Field(None, ge=0, le=20, description="extension (as vLLM): each prompt token's "
                                        "logprob and this many likeliest alternatives")  # fmt: skip

    _UNSUPPORTED: ClassVar[dict[str, Any]] = _NEUTRAL_VALUES

    @model_validator(mode="before")
    @classmethod
    def _reject_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, neutral in cls._UNSUPPORTED.items():
                value = data.get(name)
                if value is not None and value not in (neutral, {}, []):
                    raise InvalidRequest(f"'{name}' is not supported by this server yet.", param=name)
            if data.get("stream_options") is not None and not data.get("stream"):
                raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
            if data.get("prompt_logprobs") is not None and data.get("stream"):
                raise InvalidRequest("'prompt_logprobs' is not available when streaming (as vLLM).",
                                     param="prompt_logprobs")  # fmt: skip
        return data

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        temperature, top_p = self.temperature, self.top_p  # None: the model's default
        if top_p == 0.0:  # only the most likely token survives: that is greedy decoding
            temperature, top_p = 0.0, None
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=temperature, top_p=top_p, top_k=self.top_k if self.top_k and self.top_k > 0 else None,
            max_tokens=max_tokens, stop=tuple(stop), seed=self.seed, presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0, logprobs=logprobs, logit_bias=self._bias(),
        )  # fmt: skip

    def _bias(self) -> tuple[tuple[int, float], ...]:
        try:
            return tuple((int(token), float(bias)) for token, bias in (self.logit_bias or {}).items())
        except ValueError:
            raise InvalidRequest("'logit_bias' keys must be token ids (integers as strings).", param="logit_bias") from None

    _ID_PREFIX: ClassVar[str]

    @abstractmethod
    def to_jobs(self, queue_timeout: float, response_id: str | None = None) -> list[GenerateJob]:
        """One job per choice; their request ids derive from `response_id` (a new one if None)."""

    @abstractmethod
    def reply(self) -> Reply:
        """How the jobs' output is presented."""

    @abstractmethod
    def check_limits(self, limits: GatewaySettings) -> None:
        """Raise InvalidRequest for what exceeds this server's limits."""

    def generation(self, settings: GatewaySettings, detach_grace: float | None = None) -> Generation:
        """Everything `respond` needs: checked against the server's limits, with a new response id.
        `detach_grace`: seconds a client that drops the connection has to come back (a header's)."""
        self.check_limits(settings)
        response_id = f"{self._ID_PREFIX}-{uuid.uuid4().hex}"
        jobs = tuple(self.to_jobs(settings.queue_timeout, response_id))
        return Generation(response_id, jobs, self.reply(), self.keep(detach_grace))

    async def generation_off_loop(self, settings: GatewaySettings, detach_grace: float | None = None) -> Generation:
        """`generation`, in a worker thread when it compiles a grammar (the event loop serves
        every other client meanwhile)."""
        if self.compiles_grammar:
            return await run_in_threadpool(self.generation, settings, detach_grace)
        return self.generation(settings, detach_grace)

    def keep(self, detach_grace: float | None) -> Keep | None:
        """How this request outlives its connection (None: it does not; it ends with it)."""
        return Keep(grace=detach_grace) if detach_grace is not None else None

    def _jobs(self, response_id: str | None, queue_timeout: float, prompts: list[dict[str, Any]],
              params: SamplingParams, per_prompt: int | None = None) -> list[GenerateJob]:  # fmt: skip
        """One job per choice: each prompt `n` times (or `per_prompt`: best_of's candidates).  With
        a seed, choice j samples with seed + j, so the n choices differ yet the same request gives
        the same choices.  A single job's request id is the response id; several are
        `<response id>-<choice>`."""
        response_id = response_id or f"{self._ID_PREFIX}-{uuid.uuid4().hex}"
        each = per_prompt or self.n
        count = len(prompts) * each
        if count > MAX_CHOICES:
            raise InvalidRequest(f"n (or best_of) times the number of prompts may be at most {MAX_CHOICES}.",
                                 param="best_of" if each > self.n else "n")  # fmt: skip
        jobs = []
        expires_at = time.time() + queue_timeout
        for k in range(count):
            seed = None if params.seed is None else params.seed + k % each
            request_id = response_id if count == 1 else f"{response_id}-{k}"
            jobs.append(GenerateJob(**prompts[k // each], params=params.model_copy(update={"seed": seed}),
                                    request_id=request_id, model=self.model, expires_at=expires_at))  # fmt: skip
        return jobs

    def _check_common_limits(self, limits: GatewaySettings, prompt_chars: int, prompt_param: str) -> None:
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(self, name, None)
            if value is not None and value > limits.max_tokens_limit:
                raise InvalidRequest(f"'{name}' may be at most {limits.max_tokens_limit} on this server.", param=name)
        if prompt_chars > limits.max_prompt_chars:
            raise InvalidRequest(
                f"The prompt has {prompt_chars} characters; this server accepts at most {limits.max_prompt_chars}.",
                param=prompt_param, code="prompt_too_long",
            )  # fmt: skip

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _new_job_fields(prefix: str, model: str, queue_timeout: float) -> dict[str, Any]:
    return {"request_id": f"{prefix}-{uuid.uuid4().hex}", "model": model, "expires_at": time.time() + queue_timeout}


class CreateChatCompletionRequest(_GenerationRequest):
    _ID_PREFIX = "chatcmpl"
    messages: Annotated[list[ChatCompletionRequestMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: Annotated[list[ChatCompletionTool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; the model decides how many calls it writes
    response_format: ResponseFormat | None = None
    store: bool | None = False  # kept (and retrievable with GET /v1/chat/completions/{id}) until its TTL
    metadata: dict[str, str] | None = None

    def keep(self, detach_grace: float | None) -> Keep | None:
        if not self.store and detach_grace is None:
            return None
        request = {"messages": [m.model_dump(exclude_none=True) for m in self.messages]}
        return Keep(stored=bool(self.store), grace=detach_grace, metadata=metadata_of(self.metadata), request=request)

    @model_validator(mode="after")
    def _consistent(self) -> CreateChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
        names = self.tool_names
        if self.tool_choice not in (None, "none") and not self.tools:
            raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise InvalidRequest(f"tool_choice names '{self.tool_choice.function.name}', which is not among the tools.",
                                 param="tool_choice")  # fmt: skip
        if len(names) != len(self.tools or []):
            raise InvalidRequest("Two tools have the same name.", param="tools")
        if self.response_format and self.response_format.type == "json_schema" and not self.response_format.json_schema:
            raise InvalidRequest("response_format of type json_schema needs 'json_schema'.", param="response_format")
        return self

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(t.function.name for t in self.tools or [])

    @property
    def offered_tools(self) -> frozenset[str]:
        """The tools the model may call in this request (none when tool_choice is "none")."""
        return self.tool_names if self.tools and choice_name(self.tool_choice) is not None else frozenset()

    def check_limits(self, limits: GatewaySettings) -> None:
        if len(self.messages) > limits.max_messages:
            raise InvalidRequest(f"At most {limits.max_messages} messages are accepted.", param="messages")
        self._check_common_limits(limits, sum(len(m.text()) for m in self.messages), "messages")

    def reply(self) -> Reply:
        return Reply(Format.CHAT, self.stream, self.include_usage, logprobs=bool(self.logprobs), n=self.n,
                     tool_names=self.offered_tools, prompt_logprobs=self.prompt_logprobs)  # fmt: skip

    def constraint(self) -> Constraint | None:
        """The grammar the reply must match: the response format's, a forced tool call's, or an
        extension's (one at most)."""
        functions = [t.function.model_dump(exclude_none=True) for t in self.tools or []]
        forced = forced_call(functions, choice_name(self.tool_choice) if self.tools else None, self.parallel_tool_calls)
        fmt = self.response_format.constraint() if self.response_format else None
        return only_one(fmt, forced, self.extension_constraint())

    def to_jobs(self, queue_timeout: float, response_id: str | None = None) -> list[GenerateJob]:
        constraint = self.constraint()
        messages = tuple(m.to_message() for m in self.messages)
        if self.response_format and (instruction := self.response_format.instruction()):
            messages = with_system_text(messages, instruction)
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        params = self.sampling_params(self.max_completion_tokens or self.max_tokens, logprobs)
        params = params.model_copy(update={"prompt_logprobs": self.prompt_logprobs})
        chat: dict[str, Any] = {"messages": messages, "constraint": constraint}
        if self.offered_tools:
            chat["tools"] = tuple(t.function.model_dump(exclude_none=True) for t in self.tools or [])
            chat["tool_choice"] = choice_name(self.tool_choice)
        return self._jobs(response_id, queue_timeout, [chat], params)


MAX_EMBEDDING_INPUTS = 2048  # as OpenAI


class CreateEmbeddingRequest(_Request):
    model: Annotated[str, Field(min_length=1)]
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self, limits: GatewaySettings) -> tuple[str | tuple[int, ...], ...]:
        """Every input as a string or a tuple of token ids; 400 for what cannot be embedded."""
        raw = self.input
        items: list[str | tuple[int, ...]]
        if isinstance(raw, str):
            items = [raw]
        elif raw and isinstance(raw[0], int):
            items = [tuple(raw)]  # type: ignore[arg-type]
        else:
            items = [x if isinstance(x, str) else tuple(x) for x in raw]  # type: ignore[union-attr]
        if not items:
            raise InvalidRequest("'input' must not be empty.", param="input")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(f"At most {MAX_EMBEDDING_INPUTS} inputs per request.", param="input")
        for i, item in enumerate(items):
            if len(item) == 0:
                raise InvalidRequest(f"input[{i}] is empty.", param="input")
        if sum(len(x) for x in items if isinstance(x, str)) > limits.max_prompt_chars:
            raise InvalidRequest(f"The input has more than {limits.max_prompt_chars} characters.", param="input")
        return tuple(items)

    def to_job(self, limits: GatewaySettings) -> EmbedJob:
        fields = _new_job_fields("embd", self.model, limits.queue_timeout)
        return EmbedJob(inputs=self.inputs(limits), dimensions=self.dimensions, **fields)
