"""The Responses API: create (plain, streamed, background), retrieve (or resume its stream),
cancel, delete, and list a response's input items.

A response that is stored (the default) or runs in the background is a kept job: its record and
event log let any gateway answer for it until QUEUECHAT_RESULT_TTL after it ends.  A plain
request is cancelled when its client leaves, as chat completions are, unless it carries an
`X-QueueChat-Detach-Grace` header; a background one runs whoever listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from gateway.deps import HttpLabelsDep, KeeperDep, RelayDep, SettingsDep
from gateway.errors import InvalidRequest, NotFound, from_event
from gateway.jobs import JobRecord, JobStore, metadata_of
from gateway.keep import Detacher, detach_grace
from gateway.listing import list_page
from gateway.relay import Relay
from gateway.responses_render import ResponseState, replayed, stream_events
from gateway.responses_request import CreateResponseRequest, new_response_id
from gateway.routes.chat import GraceHeader
from gateway.sse import event_stream
from protocol import ErrorEvent, Event, GenerateJob

router = APIRouter()

MAX_CHAIN = 256  # previous responses followed back at most
CANCEL_WAIT_SECONDS = 3.0  # how long cancel waits for the worker to confirm


async def _history(store: JobStore, previous_id: str | None) -> list[dict[str, Any]]:
    """The items of every earlier turn (input, then output), oldest first."""
    turns: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    while previous_id is not None:
        record = await store.get(previous_id, "response")
        if record is None or previous_id in seen or len(seen) >= MAX_CHAIN:
            raise InvalidRequest(f"Previous response with id '{previous_id}' not found.", param="previous_response_id")
        seen.add(previous_id)
        state = replayed(record, await store.settled(record))
        if not state.finished:
            raise InvalidRequest(f"Previous response '{previous_id}' has not finished yet.",
                                 param="previous_response_id")  # fmt: skip
        turns.append([*record.request.get("input", []), *state.output()])
        previous_id = record.request.get("previous_response_id")
    return [item for turn in reversed(turns) for item in turn]


def _record(body: CreateResponseRequest, job: GenerateJob, grace: float | None) -> JobRecord:
    request: dict[str, Any] = {
        "input": body.input_items(), "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "top_logprobs": body.top_logprobs,
        "format": body.format, "tools": [_tool(t) for t in body.tools or []],
        "tool_choice": body.choice_name or "none", "tool_choice_body": body.tool_choice or "auto",
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "previous_response_id": body.previous_response_id,
    }  # fmt: skip
    return JobRecord(id=job.request_id, kind="response", model=job.model, request_id=job.request_id,
                     expires_at=job.expires_at, stored=body.store is not False, background=bool(body.background),
                     grace=grace, metadata=metadata_of(body.metadata), request=request)  # fmt: skip


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "name": tool["name"], "description": tool.get("description"),
            "parameters": tool.get("parameters") or {}, "strict": tool.get("strict", True)}  # fmt: skip


def _sse(chunks: AsyncIterator[bytes], response_id: str) -> EventSourceResponse:
    return event_stream(chunks, {"X-Request-Id": response_id})


@router.post("/v1/responses", response_model=None)
async def create_response(body: CreateResponseRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                          keeper: KeeperDep, labels: HttpLabelsDep, grace_header: GraceHeader = None) -> Response:  # fmt: skip
    labels.model = relay.registry.metric_label(body.model)
    store = keeper.store
    grace = detach_grace(grace_header)
    history = await _history(store, body.previous_response_id)
    job = await run_in_threadpool(body.job, settings, new_response_id(), history)  # may compile a grammar
    record = _record(body, job, grace)
    kept = record.stored or record.background or grace is not None
    if kept:
        job = job.model_copy(update={"log_ttl": store.ttl})
        await store.save(record)
    if record.background:
        try:
            await relay.enqueue(job)
        except BaseException:
            await store.delete(record)
            raise
        if body.stream:
            return await _follow(relay, keeper, record, after=-1)
        return JSONResponse(ResponseState(record).response(), headers={"X-Request-Id": record.id})
    on_leave = keeper.on_leave(record) if grace is not None else None  # else: cancelled when the client leaves
    try:
        stream = await relay.submit(job, request.is_disconnected, on_leave)
    except BaseException:
        if kept:
            await store.delete(record)
        raise
    try:
        first = await anext(stream)
        if isinstance(first, ErrorEvent):
            raise from_event(first)
    except BaseException:
        await stream.aclose()
        raise
    state = ResponseState(record)
    if body.stream:
        stream.client_gone = None  # from here sse-starlette notices a client that leaves

        async def events() -> AsyncIterator[Event]:
            yield first
            async for event in stream:
                yield event

        async def chunks() -> AsyncIterator[bytes]:
            async with stream:
                async for chunk in stream_events(state, events()):
                    yield chunk

        return _sse(chunks(), record.id)
    async with stream:
        state.apply(first)
        async for event in stream:
            state.apply(event)
    return JSONResponse(state.response(), headers={"X-Request-Id": record.id})


async def _follow(relay: Relay, keeper: Detacher, record: JobRecord, after: int) -> Response:
    """A kept response's stream from the start (replayed, then live), past sequence number `after`."""
    stream = await keeper.follow(relay, record)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async with stream:
                async for chunk in stream_events(ResponseState(record), stream, after):
                    yield chunk
        finally:
            await keeper.left(record)

    return _sse(chunks(), record.id)


async def _stored(store: JobStore, response_id: str) -> JobRecord:
    record = await store.get(response_id, "response")
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.")
    return record


@router.get("/v1/responses/{response_id}", response_model=None)
async def get_response(response_id: str, relay: RelayDep, keeper: KeeperDep, stream: bool = False,
                       starting_after: Annotated[int | None, Query(ge=-1)] = None,
                       last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None) -> Response:  # fmt: skip
    record = await _stored(keeper.store, response_id)
    if stream:
        after = starting_after if starting_after is not None else -1
        if last_event_id:
            owner, _, number = last_event_id.rpartition(":")
            if owner != response_id or not number.isdigit():
                raise InvalidRequest(f"Last-Event-ID is not an event of {response_id}.", param="Last-Event-ID")
            after = int(number)
        return await _follow(relay, keeper, record, after)
    state = replayed(record, await keeper.store.settled(record))
    return JSONResponse(state.response())


@router.post("/v1/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, keeper: KeeperDep) -> Response:
    store = keeper.store
    record = await _stored(store, response_id)
    state = replayed(record, await store.settled(record))
    if not state.finished:
        await store.cancel(record)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_SECONDS
        while not state.finished and loop.time() < deadline:  # the worker stops within a decode step
            await asyncio.sleep(0.05)
            state = replayed(record, await store.settled(record))
    return JSONResponse(state.response())


@router.delete("/v1/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, keeper: KeeperDep) -> Response:
    record = await _stored(keeper.store, response_id)
    await keeper.store.delete(record)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items", response_model=None)
async def list_input_items(response_id: str, keeper: KeeperDep, after: str | None = None,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20, order: str = "desc") -> Response:  # fmt: skip
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' is 'asc' or 'desc'.", param="order")
    record = await _stored(keeper.store, response_id)
    items = list(record.request.get("input", []))
    if order == "desc":
        items.reverse()
    return JSONResponse(list_page(items, after, limit))
