"""Publishes one request's events, numbered from 0, on its pub/sub channel, and for a kept job
appends each to its event log (a Redis Stream, entry id = sequence number) in the same round trip:
pub/sub is the live path, the log is for replay (resume, background jobs, stored responses).

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
    EVENT_LOG_MAX_EVENTS,
    FINAL_EVENTS,
    DoneEvent,
    EmbeddingsEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    KeepAliveEvent,
    PromptEvent,
    PromptToken,
    ScoresEvent,
    StartEvent,
    TokenEvent,
    TokenizedEvent,
    TokenLogprob,
    Usage,
    channel_for,
    encode_event,
    event_log_key,
    log_entry_id,
)

log = logging.getLogger(__name__)

RENEW_EVERY = 64  # events between renewals of a log's expiry (far below any TTL's worth of events)


class Outbox:
    """Events gathered during one decode step, sent together by `flush()`."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one flush at a time: a request's events stay in order
        self._pending: list[tuple[int, bytes, EventPublisher, bool]] = []

    def put(self, seq: int, data: bytes, sender: EventPublisher, final: bool = False) -> None:
        with self._lock:
            self._pending.append((seq, data, sender, final))

    def flush(self) -> None:
        with self._sending:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        pipe = self._client.pipeline(transaction=False)
        published = []  # where each event's PUBLISH reply is
        for seq, data, sender, final in pending:
            sender.send(pipe, seq, data, final)
            published.append(len(pipe) - 1)
        try:
            replies = pipe.execute(raise_on_error=False)  # one refused XADD must not silence the others
        except redis.RedisError as exc:  # the gateway notices the silence and reports it
            log.warning("could not publish %d events: %s", len(pending), exc)
            return
        for (_, _, sender, _), at in zip(pending, published):
            if replies[at] == 0:  # the gateway subscribed before sending: nobody listens any more
                sender.orphaned = True


class EventPublisher:
    def __init__(self, client: redis.Redis, request_id: str, log_ttl: int | None = None) -> None:
        """`log_ttl`: seconds the request's event log lives after its last event; None: no log."""
        self._client = client
        self._channel = channel_for(request_id)
        self._log = event_log_key(request_id)
        self._log_ttl = log_ttl
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
        final = isinstance(event, FINAL_EVENTS)
        if self._outbox is not None:
            self._outbox.put(event.seq, encode_event(event), self, final)
        else:
            pipe = self._client.pipeline(transaction=False)
            self.send(pipe, event.seq, encode_event(event), final)
            pipe.execute()

    def send(self, pipe: redis.client.Pipeline, seq: int, data: bytes, final: bool = False) -> None:
        """Queue on `pipe`: append the event to the request's log (a kept job's), then PUBLISH it.
        Log first: a reader that subscribes and then reads the log can miss nothing (an event not
        yet in the log when it read is published after it subscribed).  The log's expiry is set
        with the first event, renewed every RENEW_EVERY events and with the last: a log never
        lives on without one, and most events cost one command more, not two."""
        if self._log_ttl is not None:
            pipe.xadd(self._log, {"event": data}, id=log_entry_id(seq), maxlen=EVENT_LOG_MAX_EVENTS, approximate=True)
            if final or seq % RENEW_EVERY == 0:
                pipe.expire(self._log, self._log_ttl)
        pipe.publish(self._channel, data)

    def start(self, worker: str, prompt_tokens: int) -> None:
        self._publish(StartEvent, worker=worker, prompt_tokens=prompt_tokens)

    def prompt(self, text: str | None, tokens: tuple[PromptToken, ...] | None) -> None:
        self._publish(PromptEvent, text=text, tokens=tokens)

    def token(self, text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> None:
        self._publish(TokenEvent, text=text, logprobs=logprobs)

    def done(self, finish_reason: Literal["stop", "length"], usage: Usage, cumulative_logprob: float | None = None) -> None:
        self._publish(DoneEvent, finish_reason=finish_reason, usage=usage, cumulative_logprob=cumulative_logprob)
        self.finished = True

    def tokenized(self, max_model_len: int, tokens: tuple[int, ...] = (), token_strs: tuple[str, ...] | None = None,
                  text: str | None = None) -> None:  # fmt: skip
        self._publish(TokenizedEvent, max_model_len=max_model_len, tokens=tokens, token_strs=token_strs, text=text)
        self.finished = True

    def embeddings(self, vectors: tuple[str, ...], prompt_tokens: int) -> None:
        self._publish(EmbeddingsEvent, vectors=vectors, prompt_tokens=prompt_tokens)
        self.finished = True

    def scores(self, rows: tuple[tuple[float, ...], ...], labels: tuple[str, ...], prompt_tokens: int) -> None:
        self._publish(ScoresEvent, rows=rows, labels=labels, prompt_tokens=prompt_tokens)
        self.finished = True

    def keepalive(self) -> None:
        self._publish(KeepAliveEvent)

    def error(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        self._publish(ErrorEvent, code=code, message=message, param=param)
        self.finished = True
        if self._outbox is not None:
            self._outbox.flush()
