"""Keeping a job past its connection: the options a request gives, the record saved for it, and
the numbered SSE stream a client can resume.

Every chunk of a single-choice stream carries `id: <response id>:<position>`, where the position
is the number of the worker event that produced it (`7`), and `7.1`, `7.2` … for further chunks
from the same event (a finish chunk, the usage chunk, `[DONE]`).  Chunks are a function of the
events alone (`gateway.render.sse_events`), so a client that resumes after position P gets the
same stream re-rendered from the job's log, less every chunk up to P.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.exceptions

from gateway.errors import InvalidRequest
from gateway.jobs import JobRecord, JobStore
from gateway.relay import EventStream, OnLeave, Relay
from gateway.reply import Format, Reply
from protocol import FINAL_EVENTS, attached_key, cancel_key_for

log = logging.getLogger(__name__)

DETACH_GRACE_HEADER = "X-QueueChat-Detach-Grace"
MAX_DETACH_GRACE = 3600.0
_ALL_PARTS = 1 << 30  # `starting_after=N`: every chunk of event N was received


@dataclass(frozen=True)
class Keep:
    """A request's wish to outlive its connection: `store` (kept until done, retrievable) and/or a
    detach grace (a dropped client has this long to come back before the job is cancelled)."""

    stored: bool = False
    grace: float | None = None  # None with stored: runs to the end whoever listens
    background: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)

    def record(self, job_id: str, kind: str, request_id: str, model: str, expires_at: float,
               reply: Reply | None = None) -> JobRecord:  # fmt: skip
        return JobRecord(id=job_id, kind=kind, model=model, request_id=request_id, expires_at=expires_at,
                         stored=self.stored, background=self.background,
                         grace=None if self.stored or self.background else self.grace, metadata=self.metadata,
                         reply=reply_fields(reply) if reply else {}, request=self.request)  # fmt: skip


def detach_grace(header: str | None) -> float | None:
    """The `X-QueueChat-Detach-Grace` header's seconds (None when absent)."""
    if header is None:
        return None
    try:
        grace = float(header)
    except ValueError:
        grace = -1.0
    if not 0 < grace <= MAX_DETACH_GRACE:
        raise InvalidRequest(f"{DETACH_GRACE_HEADER} must be a number of seconds in (0, {MAX_DETACH_GRACE:g}].",
                             param=DETACH_GRACE_HEADER)  # fmt: skip
    return grace


def reply_fields(reply: Reply) -> dict[str, Any]:
    fields = asdict(reply)
    fields["fmt"] = reply.fmt.value
    fields["prefixes"] = list(reply.prefixes)
    fields["tool_names"] = sorted(reply.tool_names)
    return fields


def reply_of(fields: dict[str, Any], stream: bool) -> Reply:
    """The Reply that `reply_fields` wrote down (a job record's or a batch line's)."""
    return Reply(fmt=Format(fields["fmt"]), stream=stream, include_usage=fields["include_usage"],
                 logprobs=fields["logprobs"], prefixes=tuple(fields["prefixes"]), n=fields["n"],
                 tool_names=frozenset(fields["tool_names"]), best_of=fields.get("best_of"),
                 echo_top=fields.get("echo_top"), prompt_logprobs=fields.get("prompt_logprobs"))  # fmt: skip


@dataclass(frozen=True, order=True)
class Position:
    """Where a chunk is in a numbered stream: (event number, chunk number within that event)."""

    seq: int
    part: int = 0

    def __str__(self) -> str:
        return f"{self.seq}" if self.part == 0 else f"{self.seq}.{self.part}"


START = Position(-1, _ALL_PARTS)  # before everything
_EVENT_ID = re.compile(r"(?P<seq>\d+)(?:\.(?P<part>\d+))?")


def resume_position(job_id: str, last_event_id: str | None, starting_after: int | None) -> Position:
    """Where a resumed stream starts: after `Last-Event-ID` (`<job id>:<position>`), else after
    every chunk of event `starting_after`, else at the beginning."""
    if last_event_id:
        owner, _, position = last_event_id.rpartition(":")
        match = _EVENT_ID.fullmatch(position)
        if owner != job_id or match is None:
            raise InvalidRequest(f"Last-Event-ID '{last_event_id[:100]}' is not an event of {job_id}.",
                                 param="Last-Event-ID")  # fmt: skip
        return Position(int(match["seq"]), int(match["part"] or 0))
    if starting_after is not None:
        if starting_after < -1:
            raise InvalidRequest("'starting_after' must be -1 or more.", param="starting_after")
        return Position(starting_after, _ALL_PARTS)
    return START


async def numbered(chunks: AsyncIterable[tuple[int, str]]) -> AsyncIterator[tuple[Position, str]]:
    """Give each `(event number, payload)` its position: the k-th chunk of an event is `seq.k`."""
    last, part = -1, 0
    async for seq, payload in chunks:
        part = part + 1 if seq == last else 0
        last = seq
        yield Position(seq, part), payload


async def sse_after(chunks: AsyncIterable[tuple[int, str]], job_id: str, after: Position = START) -> AsyncIterator[bytes]:
    """The SSE bytes of the chunks past `after`, each with its id."""
    async for position, payload in numbered(chunks):
        if position > after:
            yield f"id: {job_id}:{position}\ndata: {payload}\n\n".encode()


async def coalesced(chunks: AsyncIterable[bytes], more: Callable[[], bool], limit: int = 1 << 16) -> AsyncIterator[bytes]:
    """The chunks, those that are ready together joined into one write (up to `limit` bytes):
    a client that fell behind catches up in a few writes instead of one per token."""
    buffer: list[bytes] = []
    size = 0
    async for chunk in chunks:
        buffer.append(chunk)
        size += len(chunk)
        if size >= limit or not more():
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


class Detacher:
    """What happens when a kept job's reader leaves before the end: nothing for a stored or
    background job; for one with a detach grace, a timer that cancels the job unless a client
    has come back (the job's `attached` count) by the time it runs out."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._timers: set[asyncio.Task[None]] = set()

    async def follow(self, relay: Relay, record: JobRecord) -> EventStream:
        """A reader (re-)attaching to a kept job: the job is settled first (one whose worker died
        ends now, not after the idle timeout), then the reader is counted, so that a grace timer
        leaves the job alone, until it calls `left`."""
        await self.store.settle(record)
        await self.store.attach(record.id, +1)
        try:
            return await relay.attach(record.request_id, record.model, self.on_leave(record))
        except BaseException:
            await self.left(record)
            raise

    async def left(self, record: JobRecord) -> None:
        await self.store.attach(record.id, -1)

    def on_leave(self, record: JobRecord) -> OnLeave:
        async def left() -> None:
            if record.grace is not None:
                timer = asyncio.get_running_loop().create_task(self._cancel_unless_back(record))
                self._timers.add(timer)
                timer.add_done_callback(self._timers.discard)

        return left

    async def _cancel_unless_back(self, record: JobRecord) -> None:
        assert record.grace is not None
        await asyncio.sleep(record.grace)
        client = self.store.redis
        try:
            if int(await client.get(attached_key(record.id)) or 0) > 0:
                return
            events = await self.store.events(record)
            if events and isinstance(events[-1], FINAL_EVENTS):
                return
            log.info("nobody came back for %s within %g s: cancelling it", record.id, record.grace)
            await client.set(cancel_key_for(record.request_id), 1, ex=self.store.cancel_ttl(record))
        except redis.exceptions.RedisError as exc:
            log.warning("could not cancel the detached job %s: %s", record.id, exc)

    async def close(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
