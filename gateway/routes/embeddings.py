"""POST /v1/embeddings: the inputs go to the embedding model's queue like any other request."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import HttpLabelsDep, RelayDep, SettingsDep
from gateway.openai_types import CreateEmbeddingRequest
from gateway.render import embedding_body
from protocol import EmbeddingsEvent

router = APIRouter()


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(body: CreateEmbeddingRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                           labels: HttpLabelsDep) -> Response:  # fmt: skip
    labels.model = relay.registry.metric_label(body.model)
    job = body.to_job(settings)
    event = await relay.answer(job, EmbeddingsEvent, request.is_disconnected)
    answer = embedding_body(event, job.model, body.encoding_format)
    return Response(answer.to_json(), media_type="application/json", headers={"X-Request-Id": job.request_id})
