"""Batches (`/v1/batches`): their records and working state in Redis, and how an input line
becomes a job.

A batch moves `validating → in_progress → finalizing → completed`, or ends `failed`, `expired`
or (through `cancelling`) `cancelled`.  Its working state — the valid lines, which were sent,
their results — lives under `queuechat:batchrun:<id>:*`, so whichever gateway holds the batch's
lease (`gateway.batch_runner`) can carry on where another stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from gateway.completion_request import CreateCompletionRequest
from gateway.errors import APIError, InvalidRequest
from gateway.keep import reply_fields
from gateway.listing import ids_after
from gateway.openai_types import CreateChatCompletionRequest, CreateEmbeddingRequest
from gateway.settings import GatewaySettings
from protocol import (
    ACTIVE_BATCHES_KEY,
    BATCHES_INDEX_KEY,
    EmbedJob,
    GenerateJob,
    batch_record_key,
    batch_run_key,
)

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
WINDOW_SECONDS = 24 * 3600  # completion_window "24h"
_REQUESTS = {"/v1/chat/completions": CreateChatCompletionRequest, "/v1/completions": CreateCompletionRequest,
             "/v1/embeddings": CreateEmbeddingRequest}  # fmt: skip


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchRecord(BaseModel):
    """OpenAI's Batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: Endpoint
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: Literal["24h"] = "24h"
    status: Status = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = RequestCounts()
    metadata: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def stamp(self, status: Status) -> None:
        self.status = status
        setattr(self, f"{status}_at", int(time.time()))


class Line(BaseModel):
    """A valid input line: what to queue and how to present its result."""

    index: int
    custom_id: str
    kind: Literal["generate", "embed"]
    job: dict[str, Any]
    reply: dict[str, Any] = {}  # generation: gateway.reply.Reply's fields
    encoding_format: str | None = None  # embeddings

    def job_model(self) -> GenerateJob | EmbedJob:
        return GenerateJob.model_validate(self.job) if self.kind == "generate" else EmbedJob.model_validate(self.job)


class LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def line_request_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index}"


def output_id(batch_id: str, index: int) -> str:
    return f"batch_req_{hashlib.sha256(f'{batch_id}:{index}'.encode()).hexdigest()[:32]}"


def parse_line(raw: bytes, index: int, endpoint: str, batch_id: str, settings: GatewaySettings,
               seen: set[str], log_ttl: int) -> Line:  # fmt: skip
    """Check one input line as its endpoint would check the request; LineError says why not."""
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LineError("invalid_json", "The line is not valid JSON.") from None
    if not isinstance(item, dict):
        raise LineError("invalid_request", "The line is not a JSON object.")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("missing_custom_id", "The line has no 'custom_id'.", "custom_id")
    if custom_id in seen:
        raise LineError("duplicate_custom_id", f"The custom_id '{custom_id}' appears more than once.", "custom_id")
    seen.add(custom_id)
    if item.get("method") != "POST":
        raise LineError("invalid_method", "The method must be POST.", "method")
    if item.get("url") != endpoint:
        raise LineError("mismatched_url", f"The url must be the batch's endpoint, {endpoint}.", "url")
    body = item.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_request", "The line has no request 'body'.", "body")
    if body.get("stream"):
        raise LineError("invalid_request", "Batch requests cannot stream.", "body.stream")
    request_id = line_request_id(batch_id, index)
    try:
        request = _REQUESTS[endpoint].model_validate(body)
        if isinstance(request, CreateEmbeddingRequest):
            job = request.to_job(settings).model_copy(update={"request_id": request_id, "log_ttl": log_ttl})
            return Line(index=index, custom_id=custom_id, kind="embed", job=job.model_dump(mode="json"),
                        encoding_format=request.encoding_format)  # fmt: skip
        generation = request.generation(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise LineError("invalid_request", f"{where}: {first.get('msg')}" if where else str(first.get("msg")),
                        f"body.{where}" if where else "body") from None  # fmt: skip
    except APIError as exc:
        raise LineError(exc.code or "invalid_request", exc.message, f"body.{exc.param}" if exc.param else "body") from None
    if len(generation.jobs) != 1:
        raise LineError("invalid_request", "A batch line asks for one choice (n = 1, one prompt).", "body.n")
    job = generation.jobs[0].model_copy(update={"request_id": request_id, "log_ttl": log_ttl,
                                                "expires_at": time.time() + WINDOW_SECONDS})  # fmt: skip
    return Line(index=index, custom_id=custom_id, kind="generate", job=job.model_dump(mode="json"),
                reply=reply_fields(generation.reply))  # fmt: skip


class BatchStore:
    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl  # how long a finished batch's working state is kept

    def key(self, batch_id: str, part: str) -> str:
        return batch_run_key(batch_id, part)

    async def create(self, endpoint: str, input_file_id: str, metadata: dict[str, str] | None) -> BatchRecord:
        now = int(time.time())
        record = BatchRecord(id=f"batch_{uuid.uuid4().hex}", endpoint=endpoint, input_file_id=input_file_id,  # type: ignore[arg-type]
                             created_at=now, expires_at=now + WINDOW_SECONDS, metadata=metadata)  # fmt: skip
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(batch_record_key(record.id), record.model_dump_json())
        pipe.zadd(BATCHES_INDEX_KEY, {record.id: now})
        pipe.sadd(ACTIVE_BATCHES_KEY, record.id)
        await pipe.execute()
        return record

    async def get(self, batch_id: str) -> BatchRecord | None:
        raw = await self.redis.get(batch_record_key(batch_id))
        return BatchRecord.model_validate_json(raw) if raw is not None else None

    async def save(self, record: BatchRecord) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(batch_record_key(record.id), record.model_dump_json())
        if record.status not in ACTIVE:
            pipe.srem(ACTIVE_BATCHES_KEY, record.id)
            for part in ("lines", "sent", "results", "errors", "counts", "cancel", "lease"):
                pipe.expire(self.key(record.id, part), self.ttl)
        await pipe.execute()

    async def cancel(self, batch_id: str) -> None:
        """Ask the runner to cancel (it alone writes a running batch's record)."""
        await self.redis.set(self.key(batch_id, "cancel"), 1, ex=WINDOW_SECONDS + self.ttl)

    async def cancel_asked(self, batch_id: str) -> bool:
        return bool(await self.redis.exists(self.key(batch_id, "cancel")))

    async def active(self) -> list[str]:
        return sorted(i.decode() for i in await self.redis.smembers(ACTIVE_BATCHES_KEY))

    async def page(self, after: str | None, limit: int) -> list[BatchRecord]:
        ids = await ids_after(self.redis, BATCHES_INDEX_KEY, after, desc=True)
        found = []
        for batch_id in ids[: limit + 1]:
            if (record := await self.get(batch_id)) is not None:
                found.append(record)
        return found


def counts_error(message: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"code": "invalid_file", "message": message, "param": "input_file_id", "line": None}]}


def check_endpoint(endpoint: str) -> None:
    if endpoint not in _REQUESTS:
        raise InvalidRequest(f"'endpoint' must be one of {', '.join(_REQUESTS)}.", param="endpoint")
