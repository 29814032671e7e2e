"""Stored chat completions (`"store": true`), as OpenAI's API has them: get, list, update the
metadata, delete, and the messages that asked for one.  They live until QUEUECHAT_RESULT_TTL after
they finish."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from gateway.deps import KeeperDep
from gateway.errors import NotFound
from gateway.generation import stored_completion
from gateway.jobs import JobRecord, JobStore, metadata_of
from gateway.listing import list_page

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[Literal["asc", "desc"], Query()]


async def _stored(store: JobStore, completion_id: str) -> JobRecord:
    record = await store.get(completion_id, "chat.completion")
    if record is None or not record.stored:
        raise NotFound(f"No stored chat completion '{completion_id}'.")
    return record


def _body(body: Any) -> dict[str, Any]:
    return json.loads(body.to_json())


@router.get("/v1/chat/completions/{completion_id}", response_model=None)
async def get_chat_completion(completion_id: str, keeper: KeeperDep) -> Response:
    record = await _stored(keeper.store, completion_id)
    body = await stored_completion(keeper.store, record)
    if body is None:
        raise NotFound(f"The chat completion '{completion_id}' has not finished yet; resume its stream at "
                       f"/v1/chat/completions/{completion_id}/events meanwhile.")  # fmt: skip
    return Response(body.to_json(), media_type="application/json")


@router.get("/v1/chat/completions", response_model=None)
async def list_chat_completions(request: Request, keeper: KeeperDep, model: str | None = None, after: str | None = None,
                                limit: Limit = 20, order: Order = "asc") -> Response:  # fmt: skip
    wanted = {key[len("metadata["):-1]: value for key, value in request.query_params.items()
              if key.startswith("metadata[") and key.endswith("]")}  # fmt: skip
    data: list[dict[str, Any]] = []
    async for record in keeper.store.stored("chat.completion", after, order):
        if (model and record.model != model) or any(record.metadata.get(k) != v for k, v in wanted.items()):
            continue
        try:
            body = await stored_completion(keeper.store, record)
        except Exception:  # noqa: BLE001  (one that failed is not a completion to list)
            continue
        if body is not None:
            data.append(_body(body))
            if len(data) > limit:  # one more than asked: tells whether there are more
                break
    more = len(data) > limit
    data = data[:limit]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": more})  # fmt: skip


class MetadataUpdate(BaseModel):
    metadata: dict[str, str] | None


@router.post("/v1/chat/completions/{completion_id}", response_model=None)
async def update_chat_completion(completion_id: str, update: MetadataUpdate, keeper: KeeperDep) -> Response:
    record = await _stored(keeper.store, completion_id)
    record.metadata = metadata_of(update.metadata)
    await keeper.store.update(record)
    return await get_chat_completion(completion_id, keeper)


@router.delete("/v1/chat/completions/{completion_id}", response_model=None)
async def delete_chat_completion(completion_id: str, keeper: KeeperDep) -> Response:
    record = await _stored(keeper.store, completion_id)
    await keeper.store.delete(record)
    return JSONResponse({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})


@router.get("/v1/chat/completions/{completion_id}/messages", response_model=None)
async def chat_completion_messages(completion_id: str, keeper: KeeperDep, after: str | None = None,
                                   limit: Limit = 20, order: Order = "asc") -> Response:  # fmt: skip
    record = await _stored(keeper.store, completion_id)
    messages = [{"id": f"{completion_id}-{i}", **m, "content": m.get("content")}
                for i, m in enumerate(record.request.get("messages", []))]  # fmt: skip
    if order == "desc":
        messages.reverse()
    return JSONResponse(list_page(messages, after, limit))
