"""POST /v1/classify, /v1/score and /v1/rerank (vLLM's paths without /v1 too, and /v2/rerank):
sequence classifiers and cross-encoders, through the model's queue like any other request."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.deps import HttpLabelsDep, RelayDep, SettingsDep
from gateway.metrics import HttpLabels
from gateway.relay import Relay
from gateway.scoring_types import (
    ClassificationRequest,
    RerankRequest,
    ScoreRequest,
    classification_body,
    rerank_body,
    score_body,
)
from gateway.settings import GatewaySettings
from protocol import ScoreJob, ScoresEvent

router = APIRouter()


async def _answered(body: ClassificationRequest | ScoreRequest | RerankRequest, request: Request, relay: Relay,
                    settings: GatewaySettings, labels: HttpLabels) -> tuple[ScoreJob, ScoresEvent]:  # fmt: skip
    """The request's job and the worker's scores for it (the metrics label set first)."""
    labels.model = relay.registry.metric_label(body.model)
    job = body.to_job(settings)
    return job, await relay.answer(job, ScoresEvent, request.is_disconnected)


def _json(body: BaseModel, job: ScoreJob, exclude_none: bool = False) -> Response:
    return Response(body.model_dump_json(exclude_none=exclude_none), media_type="application/json",
                    headers={"X-Request-Id": job.request_id})  # fmt: skip


@router.post("/v1/classify", response_model=None)
@router.post("/classify", response_model=None, include_in_schema=False)
async def classify(body: ClassificationRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                   labels: HttpLabelsDep) -> Response:  # fmt: skip
    job, scores = await _answered(body, request, relay, settings, labels)
    return _json(classification_body(scores, job), job)


@router.post("/v1/score", response_model=None)
@router.post("/score", response_model=None, include_in_schema=False)
async def score(body: ScoreRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                labels: HttpLabelsDep) -> Response:  # fmt: skip
    job, scores = await _answered(body, request, relay, settings, labels)
    return _json(score_body(scores, job), job)


@router.post("/v1/rerank", response_model=None)
@router.post("/rerank", response_model=None, include_in_schema=False)
@router.post("/v2/rerank", response_model=None, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                 labels: HttpLabelsDep) -> Response:  # fmt: skip
    job, scores = await _answered(body, request, relay, settings, labels)
    return _json(rerank_body(scores, job, body), job, exclude_none=True)
