"""OpenAI's response shapes, named as in openapi.json: what the gateway sends back.

Every field a body carries is set explicitly when it is built, and bodies are written with
`to_json` (unset fields left out), so a `null` the spec requires (`logprobs`, `refusal`, a
mid-stream `finish_reason`) is sent as null while optional fields stay absent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json(exclude_unset=True)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)


class CompletionUsage(OpenAIBody):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# ---- logprobs -------------------------------------------------------------------------------


class TopLogprob(OpenAIBody):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(OpenAIBody):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(OpenAIBody):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: list[ChatCompletionTokenLogprob] | None


class CompletionLogprobs(OpenAIBody):
    tokens: list[str]
    token_logprobs: list[float | None]  # null for an echoed prompt's first token, as OpenAI sent it
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(OpenAIBody):
    """vLLM's Logprob: one token at one prompt position (its `prompt_logprobs` extension)."""

    logprob: float
    rank: int | None
    decoded_token: str | None


PromptLogprobs = list[dict[str, PromptLogprob] | None]  # per prompt position (None first), keyed by token id


# ---- chat -----------------------------------------------------------------------------------


class FunctionCall(OpenAIBody):
    name: str
    arguments: str


class ChatCompletionMessageToolCall(OpenAIBody):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatCompletionMessageToolCallChunk(ChatCompletionMessageToolCall):
    index: int


class ChatCompletionResponseMessage(OpenAIBody):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None


class ChatCompletionStreamResponseDelta(OpenAIBody):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChatCompletionMessageToolCallChunk] | None = None


class ChatCompletionChoice(OpenAIBody):
    index: int
    message: ChatCompletionResponseMessage
    logprobs: ChatChoiceLogprobs | None
    finish_reason: str


class ChatCompletionChunkChoice(OpenAIBody):
    index: int
    delta: ChatCompletionStreamResponseDelta
    logprobs: ChatChoiceLogprobs | None
    finish_reason: str | None


class CreateChatCompletionResponse(OpenAIBody):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None = None
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's extension: the prompt's, on the response


class CreateChatCompletionStreamResponse(OpenAIBody):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: CompletionUsage | None = None


# ---- completions (the stream shares the body's shape) ---------------------------------------


class CompletionChoice(OpenAIBody):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None  # null mid-stream, as OpenAI sends it
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's extension: the prompt's, on the choice


class CreateCompletionResponse(OpenAIBody):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


# ---- embeddings and models ------------------------------------------------------------------


class Embedding(OpenAIBody):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 little-endian float32


class EmbeddingUsage(OpenAIBody):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(OpenAIBody):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(OpenAIBody):
    """An OpenAI model entry, with vLLM-style extras: what it can do and its context length."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    capabilities: list[str] | None = None
    max_model_len: int | None = None
    engine: str | None = None  # what runs it: transformers, llama-cpp, vllm
    unsupported: list[str] | None = None  # request features its engine cannot give (refused with a 400)
    status: Literal["ready", "failed"] | None = None
    status_reason: str | None = None


class ListModelsResponse(OpenAIBody):
    object: Literal["list"]
    data: list[Model]
