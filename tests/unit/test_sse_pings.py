"""Keep-alive pings between numbered events: the openai SDK's own SSE decoder must see only the
events (a ping ending in a blank line after an `id:` reads as an event with no data, which the SDK
fails to parse: every stream longer than the ping interval broke that way)."""

from __future__ import annotations

import asyncio
import json

import httpx
from openai._streaming import SSEDecoder
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.sse import event_stream


async def _numbered():
    for k in range(4):
        yield f"id: s:{k}\ndata: {json.dumps({'n': k})}\n\n".encode()
        await asyncio.sleep(0.12)  # several pings between events
    yield b"id: s:4\ndata: [DONE]\n\n"


async def _endpoint(request):
    return event_stream(_numbered(), {}, ping=0.03)


async def test_pings_between_numbered_events_are_not_events_to_the_sdk() -> None:
    app = Starlette(routes=[Route("/s", _endpoint)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        body = (await client.get("/s")).content
    assert body.count(b": ping") >= 4, "the test must interleave pings"
    events = list(SSEDecoder().iter_bytes(iter([body[i : i + 7] for i in range(0, len(body), 7)])))
    assert [e.data for e in events] == ['{"n": 0}', '{"n": 1}', '{"n": 2}', '{"n": 3}', "[DONE]"]
    assert [e.id for e in events] == [f"s:{k}" for k in range(5)]
