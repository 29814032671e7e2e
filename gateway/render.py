"""Worker events -> OpenAI responses: SSE chunks or one JSON body.  One loop, two formats."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.errors import APIError, InternalError, from_event
from gateway.relay import EventStream
from workers.protocol import DoneEvent, ErrorEvent, TokenEvent, Usage


class Format(Enum):
    CHAT = "chat.completion"
    TEXT = "text_completion"


@dataclass(frozen=True)
class Envelope:
    """What every chunk and body of one response shares."""

    id: str
    model: str
    fmt: Format
    created: int = field(default_factory=lambda: int(time.time()))

    def _object(self, chunk: bool) -> str:
        return "chat.completion.chunk" if chunk and self.fmt is Format.CHAT else self.fmt.value

    def wrap(self, choices: list[dict[str, Any]], *, chunk: bool, usage: Usage | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self._object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage_dict(usage)
        return body

    def delta(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict[str, Any]:
        """One streamed choice."""
        if self.fmt is Format.TEXT:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish_reason}

    def whole(self, text: str, finish_reason: str) -> dict[str, Any]:
        """One complete choice."""
        if self.fmt is Format.TEXT:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


async def sse_stream(events: EventStream, env: Envelope, include_usage: bool) -> AsyncIterator[str]:
    """The `data:` payloads of a streamed response, ending with `[DONE]`; closes `events`."""
    try:
        async with events:
            if env.fmt is Format.CHAT:
                yield _dump(env.wrap([env.delta("", role=True)], chunk=True))
            async for event in events:
                if isinstance(event, TokenEvent):
                    yield _dump(env.wrap([env.delta(event.text)], chunk=True))
                elif isinstance(event, DoneEvent):
                    yield _dump(env.wrap([env.delta(None, event.finish_reason)], chunk=True))
                    if include_usage:
                        yield _dump(env.wrap([], chunk=True, usage=event.usage))
                elif isinstance(event, ErrorEvent):
                    yield _dump(from_event(event).body())
    except APIError as exc:
        yield _dump(exc.body())
    yield "[DONE]"


async def collect(events: EventStream, env: Envelope) -> dict[str, Any]:
    """The whole response as one body; raises the APIError a worker reported."""
    parts: list[str] = []
    async with events:
        async for event in events:
            if isinstance(event, TokenEvent):
                parts.append(event.text)
            elif isinstance(event, DoneEvent):
                return env.wrap([env.whole("".join(parts), event.finish_reason)], chunk=False, usage=event.usage)
            elif isinstance(event, ErrorEvent):
                raise from_event(event)
    raise InternalError("The worker ended the response without finishing it.")
