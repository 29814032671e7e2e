"""POST /v1/embeddings: the inputs go to the embedding model's queue like any other request."""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import HttpLabelsDep, RelayDep, SettingsDep
from gateway.errors import InternalError, from_event
from gateway.openai_responses import CreateEmbeddingResponse, Embedding, EmbeddingUsage
from gateway.openai_types import CreateEmbeddingRequest
from protocol import EmbeddingsEvent, ErrorEvent

router = APIRouter()


def _floats(vector: str) -> list[float]:
    raw = base64.b64decode(vector)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(body: CreateEmbeddingRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                           labels: HttpLabelsDep) -> Response:  # fmt: skip
    labels.model = relay.registry.metric_label(body.model)
    job = body.to_job(settings)
    async with await relay.submit(job, request.is_disconnected) as events:
        async for event in events:
            if isinstance(event, ErrorEvent):
                raise from_event(event)
            if isinstance(event, EmbeddingsEvent):
                encode = (lambda v: v) if body.encoding_format == "base64" else _floats
                data = [Embedding(object="embedding", index=i, embedding=encode(v)) for i, v in enumerate(event.vectors)]
                usage = EmbeddingUsage(prompt_tokens=event.prompt_tokens, total_tokens=event.prompt_tokens)
                answer = CreateEmbeddingResponse(object="list", data=data, model=job.model, usage=usage)
                return Response(answer.to_json(), media_type="application/json", headers={"X-Request-Id": job.request_id})
    raise InternalError("The worker ended the request without an answer.")
