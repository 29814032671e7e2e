"""Runs batches: a loop every gateway runs, driving each active batch it holds the lease of.

Why a loop in the gateways and not a Celery task: a batch needs what a gateway already has — the
file storage, the relay that queues jobs, the job logs it reads results from — and nothing a
worker has; a lease in Redis (`<host>:<pid>:<token>`, renewed while a gateway drives the batch,
expiring QUEUECHAT_BATCH_LEASE seconds after it stops) makes exactly one gateway drive a batch at a time, and another take over when it dies.

Each step is short and leaves its progress in Redis: validation writes the valid lines (a hash by
line number) and the error lines; running keeps at most `batch_inflight` batch lines queued or
running per model (over every batch: a sorted set of their request ids per model), marks a line
`sent` *before* queuing it (so a line is never queued twice, whoever takes over) and collects each finished line's result from its job's log (so none is lost: a job still
running when the runner died is followed by the next one).  Finalizing writes the output and
error files in input order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from gateway.batches import (
    ACTIVE,
    BatchRecord,
    BatchStore,
    Line,
    LineError,
    counts_error,
    line_request_id,
    output_id,
    parse_line,
)
from gateway.errors import APIError, ModelNotFound, ServiceUnavailable, from_event
from gateway.files import Files
from gateway.jobs import JobRecord, JobStore
from gateway.keep import reply_of
from gateway.relay import Relay
from gateway.render import Envelope, collect_logged, embedding_body
from gateway.settings import GatewaySettings
from protocol import (
    ACTIVE_BATCHES_KEY,
    FINAL_EVENTS,
    KEY_PREFIX,
    EmbeddingsEvent,
    ErrorEvent,
    Event,
    cancel_key_for,
    decode_event,
    event_log_key,
)

log = logging.getLogger(__name__)

OUTPUT_EXPIRY = 30 * 86400  # output and error files, as OpenAI keeps them
_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0"""


class BatchRunner:
    def __init__(self, store: BatchStore, files: Files, relay: Relay, jobs: JobStore, settings: GatewaySettings) -> None:
        self.store, self.files, self.relay, self.jobs = store, files, relay, jobs
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this runner's lease token
        self.lease_ms = int(settings.batch_lease * 1000)
        self._lease = store.redis.register_script(_RENEW)

    async def run_forever(self, interval: float = 0.2) -> None:
        while True:
            busy = False
            try:
                active = await self.store.active()
            except Exception as exc:  # noqa: BLE001  (Redis away: try again shortly)
                log.warning("could not list the active batches: %s", exc)
                active = []
            for batch_id in active:
                try:  # one batch that fails (storage away, say) does not hold up the others
                    if await self._lease(keys=[self.store.key(batch_id, "lease")], args=[self.owner, self.lease_ms]):
                        busy |= await self.advance(batch_id)
                except Exception as exc:  # noqa: BLE001
                    log.warning("batch %s: this step failed, retrying: %s", batch_id, exc)
            await asyncio.sleep(interval if busy else 5 * interval)

    async def advance(self, batch_id: str) -> bool:
        """One step of a batch; whether there was anything to do."""
        record = await self.store.get(batch_id)
        if record is None or record.status not in ACTIVE:
            await self.store.redis.srem(ACTIVE_BATCHES_KEY, batch_id)
            return False
        if record.status in ("validating", "in_progress") and await self.store.cancel_asked(batch_id):
            record.stamp("cancelling")
            await self.store.save(record)
        if record.status == "validating":
            await self._validate(record)
        elif record.status == "finalizing":
            await self._finalize(record)
        else:
            return await self._run(record)
        return True

    # -- validating ----------------------------------------------------------------------------

    async def _validate(self, record: BatchRecord) -> None:
        redis, key = self.store.redis, self.store.key
        await redis.delete(key(record.id, "lines"), key(record.id, "errors"))  # a takeover starts afresh
        source = await self.files.get(record.input_file_id)
        if source is None:
            record.errors = counts_error(f"The input file {record.input_file_id} does not exist.")
            record.stamp("failed")
            await self.store.save(record)
            return
        seen: set[str] = set()
        total = failed = 0
        pipe = redis.pipeline(transaction=False)
        async for index, raw in _lines(self.files.content(source)):
            total += 1
            try:
                line = parse_line(raw, index, record.endpoint, record.id, self.settings, seen, self.store.ttl)
                pipe.hset(key(record.id, "lines"), str(index), line.model_dump_json())
            except LineError as exc:
                failed += 1
                error = {"code": exc.code, "message": exc.message, "param": exc.param, "line": index + 1}
                pipe.hset(key(record.id, "errors"), str(index), json.dumps(
                    {"id": output_id(record.id, index), "custom_id": _custom_id(raw), "response": None, "error": error}))
            if len(pipe) >= 256:
                await pipe.execute()
        for part in ("lines", "errors"):
            pipe.expire(key(record.id, part), record.expires_at - int(time.time()) + self.store.ttl)
        await pipe.execute()
        if total == 0:
            record.errors = counts_error("The input file holds no request lines.")
            record.stamp("failed")
        else:
            record.request_counts.total, record.request_counts.failed = total, failed
            record.stamp("in_progress")
        await self.store.save(record)

    # -- running -------------------------------------------------------------------------------

    async def _run(self, record: BatchRecord) -> bool:
        redis, key = self.store.redis, self.store.key
        all_lines = sorted(int(i) for i in await redis.hkeys(key(record.id, "lines")))
        sent = {int(i) for i in await redis.smembers(key(record.id, "sent"))}
        done = {int(i) for i in await redis.hkeys(key(record.id, "results"))}
        stopping = record.status == "cancelling" or time.time() > record.expires_at  # no more lines go out
        finished = [i for i in sent - done if await self._collect(record, i)]
        in_flight = len(sent - done) - len(finished)
        if stopping:
            await self._stop(record, sorted(sent - done))
        else:
            for index in (i for i in all_lines if i not in sent):
                if not await self._send(record, index):
                    break
                in_flight += 1
        await self._count(record)
        if in_flight == 0 and (stopping or len(sent | done) == len(all_lines)):
            record.stamp("finalizing")
            await self.store.save(record)
        return bool(finished) or in_flight > 0

    async def _line(self, record: BatchRecord, index: int) -> Line:
        raw = await self.store.redis.hget(self.store.key(record.id, "lines"), str(index))
        return Line.model_validate_json(raw)

    def _model_key(self, model: str) -> str:
        return f"{KEY_PREFIX}batchrun:inflight:{model}"

    async def _send(self, record: BatchRecord, index: int) -> bool:
        """Queue one line, marked sent first; False when its model already has
        QUEUECHAT_BATCH_INFLIGHT batch lines in flight (over every batch) or no live worker."""
        line = await self._line(record, index)
        redis, sent = self.store.redis, self.store.key(record.id, "sent")
        model, request_id, now = line.job["model"], line.job["request_id"], time.time()
        flying = self._model_key(model)
        await redis.zremrangebyscore(flying, "-inf", now)
        if await redis.zcard(flying) >= self.settings.batch_inflight:
            return False
        if not await redis.sadd(sent, str(index)):
            return True  # another runner sent it
        pipe = redis.pipeline(transaction=False)
        pipe.expire(sent, record.expires_at - int(now) + self.store.ttl)
        pipe.zadd(flying, {request_id: record.expires_at})
        pipe.expire(flying, record.expires_at - int(now))
        await pipe.execute()
        try:
            await self.relay.enqueue(line.job_model(), batch=True)
        except ModelNotFound as exc:
            await self._result(record, line, error=exc)
        except ServiceUnavailable:
            await redis.srem(sent, str(index))  # not queued: send it when a worker is back
            await redis.zrem(flying, request_id)
            return False
        return True

    async def _collect(self, record: BatchRecord, index: int) -> bool:
        """Record the result of a sent line whose job has ended; whether it had."""
        line = await self._line(record, index)
        job = line.job_model()
        await self.jobs.settle(JobRecord(id=job.request_id, kind="chat.completion", model=job.model,
                                         request_id=job.request_id, expires_at=job.expires_at))  # fmt: skip
        last = await self.store.redis.xrevrange(event_log_key(job.request_id), count=1)
        if not last or not isinstance(decode_event(last[0][1][b"event"]), FINAL_EVENTS):
            return False
        entries = await self.store.redis.xrange(event_log_key(job.request_id))
        events = [decode_event(fields[b"event"]) for _, fields in entries]
        error = next((e for e in events if isinstance(e, ErrorEvent)), None)
        if error is not None:
            await self._result(record, line, error=from_event(error))
            return True
        try:
            body = await _body(line, events)
        except APIError as exc:
            await self._result(record, line, error=exc)
            return True
        await self._result(record, line, body=body)
        return True

    async def _result(self, record: BatchRecord, line: Line, body: dict | None = None, error: APIError | None = None) -> None:
        """Keep a line's output (once: a line counted twice would break the counts)."""
        request_id = line.job["request_id"]
        if error is not None:
            response = {"status_code": error.status, "request_id": request_id, "body": error.body()}
        else:
            response = {"status_code": 200, "request_id": request_id, "body": body}
        entry = {"ok": error is None, "line": {"id": output_id(record.id, line.index), "custom_id": line.custom_id,
                                               "response": response, "error": None}}  # fmt: skip
        redis, key = self.store.redis, self.store.key
        if await redis.hsetnx(key(record.id, "results"), str(line.index), json.dumps(entry)):
            await redis.hincrby(key(record.id, "counts"), "completed" if error is None else "failed", 1)
        await redis.zrem(self._model_key(line.job["model"]), request_id)
        for part in ("results", "counts"):
            await redis.expire(key(record.id, part), record.expires_at - int(time.time()) + self.store.ttl)

    async def _stop(self, record: BatchRecord, in_flight: list[int]) -> None:
        """Cancelled or out of time: lines not sent never will be; lines in flight are told to stop."""
        pipe = self.store.redis.pipeline(transaction=False)
        for index in in_flight:
            pipe.set(cancel_key_for(line_request_id(record.id, index)), 1, ex=int(self.settings.queue_timeout) + 60, nx=True)
        await pipe.execute()

    async def _count(self, record: BatchRecord) -> None:
        counts = await self.store.redis.hgetall(self.store.key(record.id, "counts"))
        errors = await self.store.redis.hlen(self.store.key(record.id, "errors"))
        completed, failed = int(counts.get(b"completed", 0)), errors + int(counts.get(b"failed", 0))
        if (record.request_counts.completed, record.request_counts.failed) != (completed, failed):
            record.request_counts.completed, record.request_counts.failed = completed, failed
            await self.store.save(record)

    # -- finalizing ----------------------------------------------------------------------------

    async def _finalize(self, record: BatchRecord) -> None:
        redis, key = self.store.redis, self.store.key
        results = {int(k): json.loads(v) for k, v in (await redis.hgetall(key(record.id, "results"))).items()}
        errors = {int(k): json.loads(v) for k, v in (await redis.hgetall(key(record.id, "errors"))).items()}
        good = [results[i]["line"] for i in sorted(results) if results[i]["ok"]]
        bad = sorted([(i, r["line"]) for i, r in results.items() if not r["ok"]] + list(errors.items()))
        if good:
            record.output_file_id = (await self.files.create(_jsonl(good), f"{record.id}_output.jsonl",
                                                             "batch_output", OUTPUT_EXPIRY)).id  # fmt: skip
        if bad:
            record.error_file_id = (await self.files.create(_jsonl([b for _, b in bad]), f"{record.id}_error.jsonl",
                                                            "batch_output", OUTPUT_EXPIRY)).id  # fmt: skip
        record.request_counts.completed, record.request_counts.failed = len(good), len(bad)
        if record.cancelling_at is not None:
            record.stamp("cancelled")
        elif time.time() > record.expires_at:
            record.stamp("expired")
        else:
            record.stamp("completed")
        await self.store.save(record)


async def _body(line: Line, events: list[Event]) -> dict[str, Any]:
    if line.kind == "embed":
        vectors = next(e for e in events if isinstance(e, EmbeddingsEvent))
        return json.loads(embedding_body(vectors, line.job["model"], line.encoding_format).to_json())
    reply = reply_of(line.reply, stream=False)
    env = Envelope(id=line.job["request_id"], model=line.job["model"], fmt=reply.fmt)
    return json.loads((await collect_logged(events, env, reply)).to_json())


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """Non-empty lines of a JSONL stream, numbered from 0, read chunk by chunk."""
    tail, index = b"", 0
    async for chunk in chunks:
        *whole, tail = (tail + chunk).split(b"\n")
        for raw in whole:
            if raw.strip():
                yield index, raw
                index += 1
    if tail.strip():
        yield index, tail


async def _jsonl(items: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    batch: list[str] = []
    for item in items:
        batch.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
        if len(batch) >= 256:
            yield ("\n".join(batch) + "\n").encode()
            batch.clear()
    if batch:
        yield ("\n".join(batch) + "\n").encode()


def _custom_id(raw: bytes) -> str | None:
    try:
        value = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
