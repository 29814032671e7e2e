"""Publishes one request's events, numbered from 0, on its pub/sub channel.

Events are published at once, or, once a request is in the engine, collected in an `Outbox`
and sent with every other request's events of the same decode step in one round trip.  An error
is sent at once either way: the engine's next step may be far off, or never come.
"""

from __future__ import annotations

import logging
import threading
from typing import Literal

import redis

from protocol import (
    DoneEvent,
    EmbeddingsEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    KeepAliveEvent,
    StartEvent,
    TokenEvent,
    TokenLogprob,
    Usage,
    channel_for,
    encode_event,
)

log = logging.getLogger(__name__)


class Outbox:
    """PUBLISH commands gathered during one decode step, sent together by `flush()`."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one flush at a time: a request's events stay in order
        self._pending: list[tuple[str, bytes, EventPublisher]] = []

    def put(self, channel: str, data: bytes, sender: EventPublisher) -> None:
        with self._lock:
            self._pending.append((channel, data, sender))

    def flush(self) -> None:
        with self._sending:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        pipe = self._client.pipeline(transaction=False)
        for channel, data, _ in pending:
            pipe.publish(channel, data)
        try:
            receivers = pipe.execute()
        except redis.RedisError as exc:  # the gateway notices the silence and reports it
            log.warning("could not publish %d events: %s", len(pending), exc)
            return
        for (_, _, sender), count in zip(pending, receivers):
            if count == 0:  # the gateway subscribed before sending: nobody listens any more
                sender.orphaned = True


class EventPublisher:
    def __init__(self, client: redis.Redis, request_id: str) -> None:
        self._client = client
        self._channel = channel_for(request_id)
        self._outbox: Outbox | None = None
        self._seq = 0
        self.finished = False
        self.orphaned = False  # an event reached no subscriber: the gateway or its client is gone

    def buffered(self, outbox: Outbox) -> EventPublisher:
        """From now on, send through `outbox` (in order: nothing else publishes for this request)."""
        self._outbox = outbox
        return self

    def _publish(self, make: type[Event], **fields: object) -> None:
        event = make(seq=self._seq, **fields)
        self._seq += 1
        if self._outbox is not None:
            self._outbox.put(self._channel, encode_event(event), self)
        else:
            self._client.publish(self._channel, encode_event(event))

    def start(self, worker: str, prompt_tokens: int) -> None:
        self._publish(StartEvent, worker=worker, prompt_tokens=prompt_tokens)

    def token(self, text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> None:
        self._publish(TokenEvent, text=text, logprobs=logprobs)

    def done(self, finish_reason: Literal["stop", "length"], usage: Usage) -> None:
        self._publish(DoneEvent, finish_reason=finish_reason, usage=usage)
        self.finished = True

    def embeddings(self, vectors: tuple[str, ...], prompt_tokens: int) -> None:
        self._publish(EmbeddingsEvent, vectors=vectors, prompt_tokens=prompt_tokens)
        self.finished = True

    def keepalive(self) -> None:
        self._publish(KeepAliveEvent)

    def error(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        self._publish(ErrorEvent, code=code, message=message, param=param)
        self.finished = True
        if self._outbox is not None:
            self._outbox.flush()
