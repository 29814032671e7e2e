"""Submit a job to its model's queue and relay the worker's events back, in order.

Subscribe first, then send: no event can be published before the gateway listens (on the
gateway's one subscriber connection, gateway/subscriber.py).  While
waiting, the gateway watches the workers' heartbeats, so a dead worker becomes an error within
seconds instead of a hung stream.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any, TypeVar

import anyio
import redis.exceptions
from celery import Celery
from redis.asyncio import Redis

from gateway.errors import (
    QUEUE_ERRORS,
    APIError,
    ClientClosedRequest,
    InternalError,
    RateLimited,
    ServiceUnavailable,
    from_event,
    queue_unavailable,
)
from gateway.metrics import Metrics, RequestTrace
from gateway.registry import Registry
from gateway.subscriber import GAP, Inbox, Subscriber
from gateway.tenants import BATCH_PRIORITY, FairShare, current_tenant
from protocol import (
    FINAL_EVENTS,
    EmbedJob,
    ErrorEvent,
    Event,
    Feature,
    GenerateJob,
    KeepAliveEvent,
    ScoreJob,
    StartEvent,
    TokenizeJob,
    cancel_key_for,
    channel_for,
    decode_event,
    event_log_key,
    log_entry_id,
)
from protocol.features import requested_features

log = logging.getLogger(__name__)

_POLL_SECONDS = 1.0  # how often a silent wait re-checks the workers' heartbeats and the client

ClientGone = Callable[[], Awaitable[bool]]
OnLeave = Callable[[], Awaitable[None]]  # a kept job's reader left before the end (instead of cancelling)
AnyJob = GenerateJob | EmbedJob | ScoreJob | TokenizeJob  # each names its task (TASK)
E = TypeVar("E")


class Relay:
    def __init__(self, redis: Redis, celery: Celery, registry: Registry, queue_timeout: float, idle_timeout: float,
                 max_queue: int | None = None, metrics: Metrics | None = None,
                 show_prompts: bool = False, fair: FairShare | None = None,
                 buffer_bytes: int = 1 << 20) -> None:  # fmt: skip
        self.redis = redis
        self.subscriber = Subscriber(redis, buffer_bytes)  # one connection for every request's events
        self.fair = fair  # API keys' fair share and concurrency limits (None: the API is open)
        self.metrics = metrics
        self.show_prompts = show_prompts
        self.max_queue = max_queue
        self._sending: Counter[str] = Counter()  # admitted here, not yet in the model's Redis list
        self.celery = celery
        self.registry = registry
        self.queue_timeout = queue_timeout
        self.idle_timeout = idle_timeout

    async def answer(self, job: AnyJob, answer: type[E], client_gone: ClientGone | None = None) -> E:
        """Queue a job answered by one event (embeddings, scores, tokens) and wait for it; an
        error event is raised as the API error it stands for."""
        async with await self.submit(job, client_gone) as events:
            async for event in events:
                if isinstance(event, ErrorEvent):
                    raise from_event(event)
                if isinstance(event, answer):
                    return event
        raise InternalError("The worker ended the request without an answer.")

    async def submit(self, job: AnyJob, client_gone: ClientGone | None = None,
                     on_leave: OnLeave | None = None) -> EventStream:  # fmt: skip
        """Queue `job`; the returned stream yields its events.  Close it (async with) when done.
        `client_gone` is asked while waiting: a client that left is not waited for.  A stream
        closed before the end cancels the job, unless `on_leave` says what to do instead."""
        tenant = current_tenant.get()
        try:
            await self.registry.require_live(job.model, job.capability, _features(job))
            priority = await self.fair.admit(tenant, job.model, job.request_id) if tenant and self.fair else None
            try:
                await self._admit(job.model)  # counted in _sending until it is in the list
                try:
                    kept = isinstance(job, GenerateJob) and job.kept  # its log can fill a gap in the live feed
                    stream = EventStream(self, job.request_id, job.model, client_gone, on_leave=on_leave,
                                         logged=kept)  # fmt: skip
                    if self.metrics is not None:
                        stream.trace = self.metrics.trace(job.model, job.request_id, tenant.name if tenant else None,
                                                          tenant.priority if tenant else None)  # fmt: skip
                    if priority is not None and tenant is not None and self.fair is not None:
                        stream.release = partial(self.fair.release, tenant, job.model, job.request_id)
                    try:
                        await stream.subscribe()
                        await anyio.to_thread.run_sync(partial(self._send, job, priority))
                        if priority is not None and self.fair is not None and tenant is not None:
                            stream.queue_position = await self.fair.position(job.model, priority)
                            if self.metrics is not None:
                                self.metrics.queued.labels(tenant.priority, str(priority)).inc()
                    except BaseException:
                        await stream.aclose()
                        raise
                finally:
                    self._sending[job.model] -= 1
            except BaseException:
                if priority is not None and tenant is not None and self.fair is not None:
                    await self.fair.release(tenant, job.model, job.request_id)
                raise
        except QUEUE_ERRORS as exc:
            await self.lost_redis(exc)
            raise queue_unavailable(exc) from exc
        return stream

    async def enqueue(self, job: GenerateJob | EmbedJob | ScoreJob, *, batch: bool = False) -> None:
        """Queue a kept job that nobody listens to now (a background response, a batch line): its
        events go to its log, which anyone reads later.  Batch lines go at the lowest priority and
        are not counted against `max_queue`: interactive requests start first and never get a
        429 because of a batch."""
        try:
            await self.registry.require_live(job.model, job.capability, _features(job))
            if batch:
                await anyio.to_thread.run_sync(partial(self._send, job, BATCH_PRIORITY))
                if self.metrics is not None:
                    self.metrics.queued.labels("batch_api", str(BATCH_PRIORITY)).inc()
                return
            await self._admit(job.model)
            try:
                await anyio.to_thread.run_sync(partial(self._send, job))
            finally:
                self._sending[job.model] -= 1
        except QUEUE_ERRORS as exc:
            await self.lost_redis(exc)
            raise queue_unavailable(exc) from exc

    async def attach(self, request_id: str, model: str, on_leave: OnLeave | None,
                     client_gone: ClientGone | None = None) -> EventStream:  # fmt: skip
        """The events of a kept job, from its first: replayed from its log, then live.  Subscribe
        first, then read the log: an event missing from the log is published after the
        subscription (workers log before they publish), so nothing falls between the two."""
        stream = EventStream(self, request_id, model, client_gone, on_leave=on_leave, logged=True)
        try:
            await stream.subscribe()
            await stream.read_log()
        except BaseException as exc:
            await stream.aclose()
            if isinstance(exc, QUEUE_ERRORS):
                await self.lost_redis(exc)
                raise queue_unavailable(exc) from exc
            raise
        return stream

    async def aclose(self) -> None:
        await self.subscriber.aclose()

    async def lost_redis(self, exc: BaseException) -> None:
        """A connection to Redis broke: every idle connection in the pool is as dead as it is.
        Close them now, not when each is next used (a pool holds as many as its busiest moment)."""
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            await self.redis.connection_pool.disconnect(inuse_connections=False)

    async def _admit(self, model: str) -> None:
        """429 once `max_queue` requests already wait in the model's queue (a Redis list), counting
        those this gateway is still sending, so a burst cannot slip in between LLEN and the push.
        A task that has reached the list but whose send has not returned yet counts twice: under a
        burst the limit errs low by a few, never high."""
        self._sending[model] += 1
        if self.max_queue is None:
            return
        try:
            waiting = await self.redis.llen(model) + self._sending[model] - 1
        except BaseException:
            self._sending[model] -= 1
            raise
        if waiting >= self.max_queue:
            self._sending[model] -= 1
            raise RateLimited(
                f"Too many requests are waiting for model '{model}' ({waiting}); retry shortly.",
                headers={"Retry-After": "1"},
            )

    def _send(self, job: AnyJob, priority: int | None = None) -> None:
        self.celery.send_task(
            job.TASK,
            args=[job.model_dump(mode="json")],
            argsrepr=task_summary(job, self.show_prompts),  # what Flower and worker logs show
            kwargsrepr="{}",
            queue=job.model,
            task_id=job.request_id,
            expires=datetime.fromtimestamp(job.expires_at, tz=timezone.utc),
            priority=priority,  # Redis transport: 0 (default) is served first, 9 last
        )


def task_summary(job: AnyJob, show_prompts: bool = False) -> str:
    """A task's arguments as monitoring shows them: sizes, not content, unless configured."""
    if isinstance(job, EmbedJob):
        parts, text = [f"inputs={len(job.inputs)}"], " | ".join(str(i) for i in job.inputs)
    elif isinstance(job, ScoreJob):
        parts, text = [f"{job.mode}={len(job.texts)}"], " | ".join(" / ".join(row) for row in job.texts)
    elif job.messages is not None:
        text = "\n".join(f"{m.role}: {m.content}" for m in job.messages)
        parts = [f"messages={len(job.messages)}", f"chars={sum(len(m.content) for m in job.messages)}"]
    elif isinstance(job.prompt, tuple):
        text, parts = str(list(job.prompt)), [f"prompt_tokens={len(job.prompt)}"]
    else:
        text, parts = job.prompt or "", [f"prompt_chars={len(job.prompt or '')}"]
    if isinstance(job, GenerateJob) and job.params.max_tokens:
        parts.append(f"max_tokens={job.params.max_tokens}")
    if show_prompts:
        parts.append(repr(text[:200] + ("…" if len(text) > 200 else "")))
    return f"({job.model}: {', '.join(parts)})"


class EventStream:
    """The events of one request, checked for order, with timeouts and worker-liveness checks."""

    def __init__(self, relay: Relay, request_id: str, model: str, client_gone: ClientGone | None = None,
                 *, on_leave: OnLeave | None = None, logged: bool = False) -> None:  # fmt: skip
        self._relay = relay
        self.client_gone = client_gone  # asked about once a second; None once SSE watches the client
        self._last_check = time.monotonic()
        self._inbox: Inbox | None = None  # its channel's messages, once subscribed
        self.request_id = request_id
        self.model = model
        self._on_leave = on_leave
        self._logged = logged  # the job has an event log: gaps are filled from it
        self._backlog: deque[Event] = deque()  # events read from the log, not yet yielded
        self._next_seq = 0
        self._worker: str | None = None
        self._finished = False
        self._closed = False
        self.trace: RequestTrace | None = None  # timings for metrics and the request's log line
        self.queue_position: int | None = None  # requests ahead of it when it was queued (API keys in use)
        self.release: Callable[[], Awaitable[None]] | None = None  # ends its count against its API key

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        try:
            event = await self._next_event()
        except APIError as exc:
            if self.trace is not None:
                self.trace.fail(exc.code)
            raise
        if self.trace is not None:
            self.trace.event(event)
        self._next_seq += 1
        if isinstance(event, StartEvent):
            self._worker = event.worker
        self._finished = isinstance(event, FINAL_EVENTS)
        return event

    @property
    def ready(self) -> bool:
        """An event is here already: reading it will not wait."""
        return bool(self._backlog) or (self._inbox is not None and len(self._inbox) > 0)

    async def subscribe(self) -> None:
        self._inbox = await self._relay.subscriber.open(channel_for(self.request_id))

    async def read_log(self, after: int = -1) -> None:
        """Queue the logged events numbered above `after` (and above any already queued)."""
        start = max(after, self._next_seq + len(self._backlog) - 1) + 1
        entries = await self._relay.redis.xrange(event_log_key(self.request_id), min=log_entry_id(start))
        self._backlog.extend(decode_event(fields[b"event"]) for _, fields in entries)

    async def _next_event(self) -> Event:
        """The next event that carries something: keep-alives only restart the idle timer."""
        while True:
            try:
                event = self._backlog.popleft() if self._backlog else await self._receive()
                if self._logged and event.seq != self._next_seq and not self._backlog:
                    if event.seq < self._next_seq:
                        continue  # published live as well as read from the log
                    await self.read_log(self._next_seq - 1)  # missed live: the log has it
                    if self._backlog and self._backlog[0].seq == self._next_seq:
                        continue
            except redis.exceptions.RedisError as exc:
                await self._relay.lost_redis(exc)
                raise ServiceUnavailable(f"Lost the connection to the queue: {exc}", code="queue_unavailable") from exc
            if event.seq != self._next_seq:
                raise InternalError(
                    f"Lost part of the response (expected event {self._next_seq}, got {event.seq}).", code="event_gap"
                )
            if not isinstance(event, KeepAliveEvent):
                return event
            self._next_seq += 1

    async def _receive(self) -> Event:
        if time.monotonic() - self._last_check > _POLL_SECONDS:  # even while events flow
            await self._check_client()
        relay = self._relay
        limit = relay.idle_timeout if self._worker else relay.queue_timeout
        deadline = time.monotonic() + limit
        assert self._inbox is not None, "subscribe first"
        while True:
            data = await self._inbox.get(_POLL_SECONDS)
            if data is GAP:  # the subscriber's connection broke: events may be missing
                if not self._logged:
                    raise ServiceUnavailable("The connection to the queue was interrupted; part of this response "
                                             "may be lost.", code="queue_unavailable")  # fmt: skip
                await self.read_log(self._next_seq - 1)
                if self._backlog:
                    return self._backlog.popleft()
            elif data is not None:
                try:
                    return decode_event(data)
                except ValueError as exc:  # pydantic's ValidationError is a ValueError
                    raise InternalError("A worker sent a malformed event.", code="bad_event") from exc
            if time.monotonic() > deadline:
                what = "produced nothing" if self._worker else "was not started by any worker"
                raise ServiceUnavailable(f"The request {what} within {limit:g} s.", code="timeout")
            await self._check_workers()
            await self._check_client()

    async def _check_client(self) -> None:
        self._last_check = time.monotonic()
        if self.client_gone is not None and await self.client_gone():
            raise ClientClosedRequest("The client closed the connection.")

    async def _check_workers(self) -> None:
        registry, model = self._relay.registry, self.model
        if self._worker is None:
            if not any((await registry.liveness(model)).values()):
                raise await registry.unavailable(model, "any more")
        elif not (await registry.liveness(model)).get(self._worker, False):
            raise ServiceUnavailable(f"The worker serving this request ({self._worker}) stopped.", code="worker_lost")

    async def aclose(self) -> None:
        """If the response is incomplete, tell the worker to stop (or never start); then drop the
        subscription, whatever the first step did: a Redis that refuses a write, or has gone
        away, must not leave a subscription behind."""
        if self._closed:
            return
        self._closed = True
        if self.trace is not None:
            self.trace.close()
        request_id = self.request_id
        if self.release is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await self.release()
                except redis.exceptions.RedisError as exc:
                    log.warning("could not end %s's count against its API key: %s", request_id, exc)
        with anyio.CancelScope(shield=True):
            try:
                if not self._finished and self._on_leave is not None:
                    await self._on_leave()
                elif not self._finished:
                    await self._relay.redis.set(cancel_key_for(request_id), 1, ex=int(self._relay.queue_timeout) + 60)
            except redis.exceptions.RedisError as exc:
                log.warning("could not tell the worker to stop %s: %s", request_id, exc)
            if self._inbox is not None:
                await self._relay.subscriber.close(self._inbox)


def _features(job: AnyJob) -> dict[Feature, str]:
    """What a generation job needs of the model's engine beyond text (checked against its card)."""
    return requested_features(job) if isinstance(job, GenerateJob) else {}
