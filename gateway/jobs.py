"""Kept jobs: responses that outlive the connection that asked for them.

A kept job (stored, background, or streamed with a detach grace) has a record in Redis, written by
the gateway that accepted it and readable by every gateway: what was asked, how to present it, and
for how long it lives.  Its events are in the worker's event log (`protocol.names.event_log_key`),
so any gateway can rebuild its state, replay its stream or serve its stored body.

`JobStore` owns these keys: the record, the indexes that list stored jobs, the set of unfinished
jobs the sweep watches, and the end of a job whose worker died (a final error appended to its log,
so every reader agrees it failed).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import redis.exceptions
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from gateway.errors import InvalidRequest
from gateway.listing import ids_after
from gateway.metrics import Metrics
from gateway.registry import Registry
from protocol import (
    FINAL_EVENTS,
    UNFINISHED_KEY,
    ErrorEvent,
    Event,
    StartEvent,
    attached_key,
    cancel_key_for,
    channel_for,
    decode_event,
    encode_event,
    event_log_key,
    job_record_key,
    log_entry_id,
    stored_index_key,
)

Kind = Literal["chat.completion", "text_completion", "response"]
LATE_START_SECONDS = 30.0  # a queued job not started this long after its expiry has been lost


class JobRecord(BaseModel):
    """What any gateway needs to serve a kept job again."""

    id: str  # the response id the client holds (chatcmpl-…, cmpl-…, resp_…)
    kind: Kind
    model: str
    request_id: str  # the one job on the queue (its channel and log)
    created: int = Field(default_factory=lambda: int(time.time()))
    expires_at: float  # the task's expiry: a job not started by then never will be
    stored: bool = False  # retrievable (and listed) after it ends
    background: bool = False
    grace: float | None = None  # seconds a detached job waits for a client to come back; None: forever
    metadata: dict[str, str] = {}
    reply: dict[str, Any] = {}  # chat/completions: how to present it (gateway.reply.Reply's fields)
    request: dict[str, Any] = {}  # what was asked, as each endpoint needs it back (messages, input items)
    ttl: int | None = None  # seconds its keys live after the end: the saving gateway's, whoever ends it


class JobStore:
    def __init__(self, redis: Redis, registry: Registry, ttl: int, metrics: Metrics | None = None) -> None:
        self.redis = redis
        self.registry = registry
        self.metrics = metrics
        self.ttl = ttl  # seconds a job's keys live after its last event

    def ttl_of(self, record: JobRecord) -> int:
        """Seconds a job's keys live after its end: what the gateway that kept it was set to (another
        gateway sweeping the same Redis may be set otherwise); this one's for records without."""
        return record.ttl if record.ttl is not None else self.ttl

    def record_ttl(self, record: JobRecord) -> int:
        """A record outlives the wait in the queue plus its log's TTL (renewed when it ends)."""
        return int(max(0.0, record.expires_at - time.time())) + self.ttl_of(record)

    @staticmethod
    def cancel_ttl(record: JobRecord) -> int:
        """A cancel key must outlive the job's wait in the queue (a running job sees it at once)."""
        return int(max(0.0, record.expires_at - time.time())) + 60

    async def save(self, record: JobRecord) -> None:
        if record.ttl is None:
            record.ttl = self.ttl
        ttl = self.record_ttl(record)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(job_record_key(record.id), record.model_dump_json(), ex=ttl)
        if record.stored:
            pipe.zadd(stored_index_key(record.kind), {record.id: record.created})
            pipe.expire(stored_index_key(record.kind), ttl)
        pipe.zadd(UNFINISHED_KEY, {record.id: record.created})
        pipe.expire(UNFINISHED_KEY, ttl)
        await pipe.execute()
        if self.metrics is not None:
            how = "background" if record.background else "stored" if record.stored else "detach"
            self.metrics.kept.labels(self.registry.metric_label(record.model), how).inc()

    async def update(self, record: JobRecord) -> None:
        await self.redis.set(job_record_key(record.id), record.model_dump_json(), keepttl=True)

    async def get(self, job_id: str, kind: Kind | None = None) -> JobRecord | None:
        raw = await self.redis.get(job_record_key(job_id))
        if raw is None:
            return None
        record = JobRecord.model_validate_json(raw)
        return record if kind is None or record.kind == kind else None

    async def events(self, record: JobRecord) -> list[Event]:
        """Every event of the job logged so far, in order."""
        entries = await self.redis.xrange(event_log_key(record.request_id))
        return [decode_event(fields[b"event"]) for _, fields in entries]

    async def settled(self, record: JobRecord) -> list[Event]:
        """The job's events, after `settle`: what every read of a kept job goes through."""
        await self.settle(record)
        return await self.events(record)

    async def settle(self, record: JobRecord) -> bool:
        """End a job whose worker died, or that no worker started in time, with an error event: a
        kept job is never `in_progress` or `queued` forever.  Reads only the log's first and last
        events.  True when this call ended it."""
        key = event_log_key(record.request_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrevrange(key, count=1)
        pipe.xrange(key, min=log_entry_id(0), max=log_entry_id(0))
        last_entries, first_entries = await pipe.execute()
        last = decode_event(last_entries[0][1][b"event"]) if last_entries else None
        first = decode_event(first_entries[0][1][b"event"]) if first_entries else None
        if isinstance(last, FINAL_EVENTS):
            await self.finished(record)
            return False
        seq = last.seq + 1 if last is not None else 0
        if isinstance(first, StartEvent) and not await self.registry.is_alive(record.model, first.worker):
            failure = ErrorEvent(seq=seq, code="worker_lost",
                                 message=f"The worker serving this job ({first.worker}) stopped.")  # fmt: skip
        elif last is None and time.time() > record.expires_at + LATE_START_SECONDS:
            failure = ErrorEvent(seq=seq, code="expired", message="No worker started the job in time.")
        else:
            return False
        return await self.end_with(record, failure)

    async def end_with(self, record: JobRecord, final: ErrorEvent) -> bool:
        """Append `final` to the job's log, unless the worker wrote an event of that number first
        (then the log says how it went: False), and publish it to anyone reading live."""
        try:
            await self.redis.xadd(event_log_key(record.request_id), {"event": encode_event(final)},
                                  id=log_entry_id(final.seq))  # fmt: skip
        except redis.exceptions.ResponseError:  # the worker's next event came first
            await self.settle(record)
            return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(event_log_key(record.request_id), self.ttl_of(record))
        pipe.publish(channel_for(record.request_id), encode_event(final))
        await pipe.execute()
        await self.finished(record)
        return True

    async def finished(self, record: JobRecord) -> None:
        """The job ended: its record lives as long as its log, the sweep forgets it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(job_record_key(record.id), self.ttl_of(record))
        pipe.zrem(UNFINISHED_KEY, record.id)
        await pipe.execute()

    async def cancel(self, record: JobRecord) -> None:
        """Ask the worker to stop (it checks every decode step); a job still queued is cancelled here."""
        await self.redis.set(cancel_key_for(record.request_id), 1, ex=self.cancel_ttl(record))
        if not await self.redis.exists(event_log_key(record.request_id)):
            await self.end_with(record, ErrorEvent(seq=0, code="cancelled", message="Cancelled before it started."))

    async def delete(self, record: JobRecord) -> None:
        """Forget the job; one still running is cancelled first."""
        events = await self.events(record)
        if not (events and isinstance(events[-1], FINAL_EVENTS)):
            await self.redis.set(cancel_key_for(record.request_id), 1, ex=self.cancel_ttl(record))
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(job_record_key(record.id), event_log_key(record.request_id), attached_key(record.id))
        pipe.zrem(stored_index_key(record.kind), record.id)
        pipe.zrem(UNFINISHED_KEY, record.id)
        await pipe.execute()

    async def stored(self, kind: Kind, after: str | None, order: str) -> AsyncIterator[JobRecord]:
        """Stored jobs of `kind` in creation order (`asc`/`desc`), after the id `after`; ids whose
        record has expired leave the index on the way."""
        index = stored_index_key(kind)
        await self.redis.zremrangebyscore(index, "-inf", time.time() - self.ttl - 86400)  # long gone
        for job_id in await ids_after(self.redis, index, after, desc=order == "desc"):
            record = await self.get(job_id, kind)
            if record is None:
                await self.redis.zrem(index, job_id)  # expired
            else:
                yield record

    async def page(self, kind: Kind, after: str | None, limit: int, order: str) -> list[JobRecord]:
        """Up to limit + 1 stored jobs (one more than asked: tells whether there are more)."""
        records: list[JobRecord] = []
        async for record in self.stored(kind, after, order):
            records.append(record)
            if len(records) > limit:
                break
        return records

    async def unfinished(self) -> list[JobRecord]:
        ids = [i.decode() for i in await self.redis.zrange(UNFINISHED_KEY, 0, -1)]
        records = []
        for job_id in ids:
            record = await self.get(job_id)
            if record is None:
                await self.redis.zrem(UNFINISHED_KEY, job_id)
            else:
                records.append(record)
        return records

    async def sweep(self) -> int:
        """Settle every unfinished job (run periodically by each gateway); how many ended here."""
        ended = 0
        for record in await self.unfinished():
            ended += await self.settle(record)
        return ended

    async def attach(self, job_id: str, delta: int) -> int:
        """Count a client that starts (+1) or stops (-1) reading the job; the count after."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(attached_key(job_id), delta)
        pipe.expire(attached_key(job_id), self.ttl)
        count, _ = await pipe.execute()
        return int(count)


def metadata_of(value: Any) -> dict[str, str]:
    """OpenAI's metadata: at most 16 string pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise InvalidRequest("'metadata' is an object of at most 16 key-value pairs.", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise InvalidRequest("'metadata' keys are strings of at most 64 characters, values strings of at "
                                 "most 512.", param="metadata")  # fmt: skip
    return dict(value)


