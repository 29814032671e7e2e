"""The Batch API: create a batch from an uploaded file, follow it, list batches, cancel one.
The work itself is done by `gateway.batch_runner` (in every gateway, one at a time per batch)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from gateway.batches import ACTIVE, BatchRecord, BatchStore, check_endpoint
from gateway.deps import BatchesDep, FilesDep
from gateway.errors import InvalidRequest, NotFound
from gateway.jobs import metadata_of

router = APIRouter()


class CreateBatchRequest(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


async def _batch(store: BatchStore, batch_id: str) -> BatchRecord:
    record = await store.get(batch_id)
    if record is None:
        raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
    return record


@router.post("/v1/batches", response_model=None)
async def create_batch(body: CreateBatchRequest, store: BatchesDep, files: FilesDep) -> Response:
    check_endpoint(body.endpoint)
    if body.completion_window != "24h":
        raise InvalidRequest("'completion_window' must be '24h'.", param="completion_window")
    source = await files.get(body.input_file_id)
    if source is None:
        raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
    if source.purpose != "batch":
        raise InvalidRequest("The input file must have purpose 'batch'.", param="input_file_id")
    record = await store.create(body.endpoint, body.input_file_id, metadata_of(body.metadata) or None)
    return JSONResponse(record.body())


@router.get("/v1/batches/{batch_id}", response_model=None)
async def get_batch(batch_id: str, store: BatchesDep) -> Response:
    return JSONResponse((await _batch(store, batch_id)).body())


@router.get("/v1/batches", response_model=None)
async def list_batches(store: BatchesDep, after: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:  # fmt: skip
    found = await store.page(after, limit)
    data: list[dict[str, Any]] = [r.body() for r in found[:limit]]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": len(found) > limit})  # fmt: skip


@router.post("/v1/batches/{batch_id}/cancel", response_model=None)
async def cancel_batch(batch_id: str, store: BatchesDep) -> Response:
    record = await _batch(store, batch_id)
    if record.status not in ACTIVE:
        raise InvalidRequest(f"Batch {batch_id} is {record.status}: it cannot be cancelled.", param="batch_id",
                             code="batch_not_cancellable")  # fmt: skip
    await store.cancel(batch_id)
    if record.status != "cancelling":  # the runner records it at its next step
        record.status, record.cancelling_at = "cancelling", int(time.time())
    return JSONResponse(record.body())
