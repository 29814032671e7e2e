"""Publishes one request's events, numbered from 0, on its pub/sub channel."""

from __future__ import annotations

from typing import Literal

import redis

from workers.protocol import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    StartEvent,
    TokenEvent,
    Usage,
    channel_for,
    encode_event,
)


class EventPublisher:
    def __init__(self, client: redis.Redis, request_id: str) -> None:
        self._client = client
        self._channel = channel_for(request_id)
        self._seq = 0
        self.finished = False

    def _publish(self, make: type[Event], **fields: object) -> None:
        event = make(seq=self._seq, **fields)
        self._seq += 1
        self._client.publish(self._channel, encode_event(event))

    def start(self, worker: str, prompt_tokens: int) -> None:
        self._publish(StartEvent, worker=worker, prompt_tokens=prompt_tokens)

    def token(self, text: str) -> None:
        self._publish(TokenEvent, text=text)

    def done(self, finish_reason: Literal["stop", "length"], usage: Usage) -> None:
        self._publish(DoneEvent, finish_reason=finish_reason, usage=usage)
        self.finished = True

    def error(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        self._publish(ErrorEvent, code=code, message=message, param=param)
        self.finished = True
