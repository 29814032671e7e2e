"""The one path both generation endpoints take: queue the jobs, wait for their first events,
then stream or collect.  The routes call `respond(relay, body.generation(settings), ...)`.

A kept generation (store, detach grace) also gets a job record first, its job an event log, and
its stream numbered event ids: `resume` serves the same stream again, from any gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import Response

from gateway.errors import APIError, InvalidRequest, NotFound
from gateway.fanout import Choices
from gateway.jobs import JobRecord, JobStore, Kind
from gateway.keep import Detacher, Position, coalesced, reply_of, resume_position, sse_after
from gateway.relay import ClientGone, OnLeave, Relay
from gateway.render import Body, Envelope, collect, collect_logged, sse_events, sse_stream
from gateway.reply import Generation
from gateway.sse import event_stream
from protocol import FINAL_EVENTS

QUEUE_POSITION_HEADER = "X-QueueChat-Queue-Position"  # requests ahead of this one when it was queued
QUEUED_PATIENCE = 0.5  # seconds a keyed stream waits for a worker before it starts with its queue position


async def respond(relay: Relay, generation: Generation, client_gone: ClientGone | None = None,
                  keeper: Detacher | None = None) -> Response:  # fmt: skip
    """Queue the jobs and answer with SSE or JSON.

    The HTTP status is decided by the workers' first events (start or error), so a prompt that is
    too long gets a real 400 even when streaming was asked for.
    """
    on_leave, record = None, None
    if generation.keep is not None and keeper is not None:
        generation, record, on_leave = await _kept(keeper, generation)
    # With API keys, a stream still queued after a moment starts at once and says where it is
    patience = QUEUED_PATIENCE if generation.reply.stream and len(generation.jobs) == 1 and relay.fair else None
    try:
        choices = await Choices.open(relay, generation.jobs, client_gone, on_leave, patience)
    except BaseException:
        if record is not None and keeper is not None and not await keeper.store.events(record):
            await keeper.store.delete(record)  # never queued (or never started): nothing to keep
        raise
    env = Envelope(id=generation.response_id, model=generation.model, fmt=generation.reply.fmt)
    headers = {"X-Request-Id": generation.response_id}
    if choices.queue_position is not None:
        headers[QUEUE_POSITION_HEADER] = str(choices.queue_position)
    count = len(generation.jobs)
    if generation.reply.stream:
        choices.stop_watching_client()  # from here sse-starlette notices a client that leaves
        if count == 1:  # one event stream: every chunk gets a resumable id

            async def numbered() -> AsyncIterator[bytes]:
                async with choices:
                    if choices.waiting:
                        try:
                            yield f": queue-position {choices.queue_position}\n\n".encode()
                            async for _ in choices.until_started(every=1.0):
                                yield b": queued\n\n"
                        except APIError as exc:  # refused when a worker took it: the 200 is sent
                            yield f"data: {exc.to_json()}\n\ndata: [DONE]\n\n".encode()
                            return
                    chunks = sse_after(sse_events(choices, env, generation.reply, 1), env.id)
                    async for data in coalesced(chunks, lambda: choices.ready):
                        yield data

            return event_stream(numbered(), headers)

        async def stream() -> AsyncIterator[str]:
            async with choices:
                async for payload in sse_stream(choices, env, generation.reply, count):
                    yield payload

        return event_stream(stream(), headers)
    async with choices:
        body = await collect(choices, env, generation.reply, count)
    return Response(body.to_json(), media_type="application/json", headers=headers)


async def _kept(keeper: Detacher, generation: Generation) -> tuple[Generation, JobRecord, OnLeave]:
    """Save the job record and give the job its log; what its readers do when they leave."""
    assert generation.keep is not None
    if len(generation.jobs) != 1:
        raise InvalidRequest("'store' and detaching work for one choice at a time (n = 1, one prompt).", param="n")
    store = keeper.store
    job = generation.jobs[0].model_copy(update={"log_ttl": store.ttl})
    record = generation.keep.record(generation.response_id, generation.reply.fmt.value, job.request_id, job.model,
                                    job.expires_at, generation.reply)  # fmt: skip
    await store.save(record)
    kept = Generation(generation.response_id, (job,), generation.reply, generation.keep)
    return kept, record, keeper.on_leave(record)


async def resume_kept(relay: Relay, keeper: Detacher, kind: Kind, job_id: str, last_event_id: str | None,
                      starting_after: int | None, missing: str) -> Response:  # fmt: skip
    """`GET .../{id}/events` of a kept chat completion or completion: 404 (saying `missing`) when
    there is no such kept job, else its numbered stream again past the client's position."""
    record = await keeper.store.get(job_id, kind)
    if record is None:
        raise NotFound(missing)
    return await resume(relay, keeper, record, resume_position(job_id, last_event_id, starting_after))


async def resume(relay: Relay, keeper: Detacher, record: JobRecord, after: Position) -> Response:
    """The numbered stream of a kept chat completion or completion again, past `after`: replayed
    from its log, then live, then `[DONE]`."""
    stream = await keeper.follow(relay, record)
    try:
        choices = await Choices.of(stream)
    except BaseException:
        await keeper.left(record)
        raise
    reply = reply_of(record.reply, stream=True)
    env = Envelope(id=record.id, model=record.model, fmt=reply.fmt, created=record.created)

    async def numbered() -> AsyncIterator[bytes]:
        try:
            async with choices:
                chunks = sse_after(sse_events(choices, env, reply, 1), record.id, after)
                async for data in coalesced(chunks, lambda: choices.ready):
                    yield data
        finally:
            await keeper.left(record)

    return event_stream(numbered(), {"X-Request-Id": record.id})


async def stored_completion(store: JobStore, record: JobRecord) -> Body | None:
    """A kept completion's non-streamed body once it has finished (None before); raises the API
    error it ended with."""
    events = await store.settled(record)
    if not events or not isinstance(events[-1], FINAL_EVENTS):
        return None
    reply = reply_of(record.reply, stream=False)
    env = Envelope(id=record.id, model=record.model, fmt=reply.fmt, created=record.created)
    return await collect_logged(events, env, reply)
