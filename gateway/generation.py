"""The one path both generation endpoints take: queue the jobs, wait for their first events,
then stream or collect.  The routes call `respond(relay, body.generation(settings), ...)`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from gateway.fanout import Choices
from gateway.relay import ClientGone, Relay
from gateway.render import Envelope, collect, sse_stream
from gateway.reply import Generation


async def respond(relay: Relay, generation: Generation, client_gone: ClientGone | None = None) -> Response:
    """Queue the jobs and answer with SSE or JSON.

    The HTTP status is decided by the workers' first events (start or error), so a prompt that is
    too long gets a real 400 even when streaming was asked for.
    """
    choices = await Choices.open(relay, generation.jobs, client_gone)
    env = Envelope(id=generation.response_id, model=generation.model, fmt=generation.reply.fmt)
    headers = {"X-Request-Id": generation.response_id}
    count = len(generation.jobs)
    if generation.reply.stream:
        choices.stop_watching_client()  # from here sse-starlette notices a client that leaves

        async def stream() -> AsyncIterator[str]:
            async with choices:
                async for payload in sse_stream(choices, env, generation.reply, count):
                    yield payload

        return EventSourceResponse(stream(), sep="\n", headers=headers)
    async with choices:
        body = await collect(choices, env, generation.reply, count)
    return Response(body.to_json(), media_type="application/json", headers=headers)
