"""POST /tokenize and /detokenize (also under /v1/), in vLLM's shapes: only a worker has the
model's tokenizer, so each is a small job on the model's queue, answered by one TokenizedEvent."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field, model_validator

from gateway.deps import HttpLabelsDep, RelayDep, SettingsDep
from gateway.errors import InvalidRequest
from gateway.openai_responses import OpenAIBody
from gateway.openai_types import ChatCompletionRequestMessage, _Request
from gateway.relay import Relay
from protocol import TokenizedEvent, TokenizeJob

router = APIRouter()

MAX_TOKENS_IN = 1 << 20  # token ids one /detokenize takes


class TokenizeRequest(_Request):
    """vLLM's TokenizeCompletionRequest (`prompt`) or TokenizeChatRequest (`messages`)."""

    model: Annotated[str, Field(min_length=1)]
    prompt: str | None = None
    messages: Annotated[list[ChatCompletionRequestMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None  # vLLM's defaults: true for a prompt, false for messages
    add_generation_prompt: bool = True
    return_token_strs: bool | None = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest("Give either 'prompt' or 'messages'.", param="prompt")
        return self

    def to_job(self, queue_timeout: float) -> TokenizeJob:
        special = self.add_special_tokens if self.add_special_tokens is not None else self.messages is None
        messages = tuple(m.to_message() for m in self.messages) if self.messages is not None else None
        return TokenizeJob(**_job_fields(self.model, queue_timeout), prompt=self.prompt, messages=messages,
                           add_special_tokens=special, add_generation_prompt=self.add_generation_prompt,
                           return_token_strs=bool(self.return_token_strs))  # fmt: skip


class DetokenizeRequest(_Request):
    model: Annotated[str, Field(min_length=1)]
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_TOKENS_IN)]

    def to_job(self, queue_timeout: float) -> TokenizeJob:
        return TokenizeJob(**_job_fields(self.model, queue_timeout), tokens=tuple(self.tokens))


class TokenizeResponse(OpenAIBody):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(OpenAIBody):
    prompt: str


def _job_fields(model: str, queue_timeout: float) -> dict:
    return {"request_id": f"tok-{uuid.uuid4().hex}", "model": model, "expires_at": time.time() + queue_timeout}


async def _answer(relay: Relay, job: TokenizeJob, request: Request) -> TokenizedEvent:
    return await relay.answer(job, TokenizedEvent, request.is_disconnected)


@router.post("/tokenize", response_model=None)
@router.post("/v1/tokenize", response_model=None)
async def tokenize(body: TokenizeRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                   labels: HttpLabelsDep) -> Response:  # fmt: skip
    labels.model = relay.registry.metric_label(body.model)
    event = await _answer(relay, body.to_job(settings.queue_timeout), request)
    answer = TokenizeResponse(count=len(event.tokens), max_model_len=event.max_model_len, tokens=list(event.tokens))
    if event.token_strs is not None:
        answer.token_strs = list(event.token_strs)
    return Response(answer.to_json(), media_type="application/json")


@router.post("/detokenize", response_model=None)
@router.post("/v1/detokenize", response_model=None)
async def detokenize(body: DetokenizeRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                     labels: HttpLabelsDep) -> Response:  # fmt: skip
    labels.model = relay.registry.metric_label(body.model)
    event = await _answer(relay, body.to_job(settings.queue_timeout), request)
    return Response(DetokenizeResponse(prompt=event.text or "").to_json(), media_type="application/json")
