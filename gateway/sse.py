"""Server-sent event responses: one way for every stream the gateway sends.

Keep-alive pings are a comment line without the blank line that ends an event.  A numbered
stream's events carry `id:`, and a client that remembers the last id (as the SSE spec says; the
openai SDK's decoder does) takes a blank line after a comment for an event of its own, with no
data, and fails to parse it: every stream longer than the ping interval broke that way.  A comment
line alone is skipped, and the next event's blank line ends only that event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from sse_starlette import EventSourceResponse

PING = b": ping\n"


def event_stream(chunks: AsyncIterator[bytes] | AsyncIterator[str], headers: Mapping[str, str],
                 ping: float | None = None) -> EventSourceResponse:  # fmt: skip
    """`chunks` (whole events, each ending with its blank line) as an SSE response; `ping`:
    seconds between keep-alives (sse-starlette's default, 15, when None)."""
    return EventSourceResponse(chunks, sep="\n", headers=headers, ping=ping,
                               ping_message_factory=lambda: PING)  # type: ignore[arg-type,return-value]  # fmt: skip
