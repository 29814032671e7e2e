"""OpenAI request models (names as in openapi.json) and their translation into a `GenerateJob`.

Unknown fields are ignored, as OpenAI's own server does; fields we do not implement yet are
rejected with a 400 naming them, rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import InvalidRequest
from gateway.settings import GatewaySettings
from workers.protocol import ChatMessage, GenerateJob, SamplingParams

MAX_STOP_SEQUENCES = 4


# Not implemented yet (issue 6); accepted only at these neutral values.
_NEUTRAL_VALUES: dict[str, Any] = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "best_of": 1,
    "echo": False,
    "suffix": None,
}


class TextContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatCompletionRequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """Fields shared by chat and completions requests."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _reject_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, neutral in _NEUTRAL_VALUES.items():
                value = data.get(name)
                if value is not None and value not in (neutral, {}, []):
                    raise InvalidRequest(f"'{name}' is not supported by this server yet.", param=name)
            if data.get("stream_options") is not None and not data.get("stream"):
                raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
        return data

    def sampling_params(self, max_tokens: int | None) -> SamplingParams:
        temperature, top_p = self.temperature, self.top_p  # None: the model's default
        if top_p == 0.0:  # only the most likely token survives: that is greedy decoding
            temperature, top_p = 0.0, None
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop), seed=self.seed)

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
    messages: Annotated[list[ChatCompletionRequestMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)

    def check_limits(self, limits: GatewaySettings) -> None:
        if len(self.messages) > limits.max_messages:
            raise InvalidRequest(f"At most {limits.max_messages} messages are accepted.", param="messages")
        self._check_common_limits(limits, sum(len(m.text()) for m in self.messages), "messages")

    def to_job(self, queue_timeout: float) -> GenerateJob:
        messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in self.messages)
        params = self.sampling_params(self.max_completion_tokens or self.max_tokens)
        return GenerateJob(messages=messages, params=params, **_new_job_fields("chatcmpl", self.model, queue_timeout))


class CreateCompletionRequest(_GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    def check_limits(self, limits: GatewaySettings) -> None:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        self._check_common_limits(limits, len(prompt), "prompt")

    def to_job(self, queue_timeout: float) -> GenerateJob:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        params = self.sampling_params(self.max_tokens)
        return GenerateJob(prompt=prompt, params=params, **_new_job_fields("cmpl", self.model, queue_timeout))
