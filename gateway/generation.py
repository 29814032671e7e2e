"""The one path both generation endpoints take: job -> relay -> first event -> stream or body."""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from gateway.errors import from_event
from gateway.relay import ClientGone, Relay
from gateway.render import Envelope, Format, collect, sse_stream
from workers.protocol import ErrorEvent, GenerateJob


async def respond(relay: Relay, job: GenerateJob, fmt: Format, stream: bool, include_usage: bool,
                  client_gone: ClientGone | None = None) -> Response:  # fmt: skip
    """Queue `job` and answer with SSE or JSON.

    The HTTP status is decided by the worker's first event (start or error), so a prompt that is
    too long gets a real 400 even when streaming was asked for.
    """
    events = await relay.submit(job, client_gone)
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    if isinstance(first, ErrorEvent):
        await events.aclose()
        raise from_event(first)
    env = Envelope(id=job.request_id, model=job.model, fmt=fmt)
    headers = {"X-Request-Id": job.request_id}
    if stream:
        events.client_gone = None  # from here sse-starlette notices a client that leaves
        return EventSourceResponse(sse_stream(events, env, include_usage), sep="\n", headers=headers)
    return JSONResponse(await collect(events, env), headers=headers)
