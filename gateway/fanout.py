"""Several jobs answered as one response: `n` choices, or one choice per completion prompt.

Each choice is its own job on the model's queue (so a worker batches them like any other
requests) with its own event stream; `Choices` merges the streams in arrival order, tagged with
the choice's index.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.errors import from_event
from gateway.relay import ClientGone, EventStream, OnLeave, Relay
from protocol import DoneEvent, ErrorEvent, Event, GenerateJob


class Choices:
    def __init__(self, streams: Sequence[EventStream]) -> None:
        self._streams = list(streams)
        self._reads: dict[asyncio.Future[Event], int] = {}
        self._open = set(range(len(self._streams)))
        self._firsts: list[asyncio.Future[Event]] = []  # each stream's first event (start or error)

    @classmethod
    async def open(cls, relay: Relay, jobs: Sequence[GenerateJob], client_gone: ClientGone | None,
                   on_leave: OnLeave | None = None, patience: float | None = None) -> Choices:  # fmt: skip
        """Queue every job and wait for each one's first event: raise the first error any reports
        (a prompt that is too long gets its 400 before a stream starts).  With `patience`, wait
        that long at most: if the jobs are still queued then, `waiting` is true and the caller
        goes on (a stream can tell its client where it is in the queue) through `until_started`."""
        streams: list[EventStream] = []
        try:
            for job in jobs:
                streams.append(await relay.submit(job, client_gone, on_leave))
        except BaseException:
            await cls(streams).aclose()
            raise
        return await cls(streams)._started(patience)

    @classmethod
    async def of(cls, stream: EventStream) -> Choices:
        """One open event stream (a kept job's, replayed from its first event) as a started choice."""
        return await cls([stream])._started()

    async def _started(self, patience: float | None = None) -> Choices:
        self._firsts = [asyncio.ensure_future(anext(s)) for s in self._streams]
        try:
            await asyncio.wait(self._firsts, timeout=patience, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            await self.aclose()
            raise
        if not self.waiting or any(f.done() and f.exception() for f in self._firsts):
            await self._check_firsts()
        return self

    @property
    def waiting(self) -> bool:
        """Some job has not been started (or refused) by a worker yet."""
        return any(not first.done() for first in self._firsts)

    async def until_started(self, every: float) -> AsyncIterator[None]:
        """Yield every `every` seconds while a job is still queued; then raise the first error,
        as `open` does."""
        while self.waiting:
            await asyncio.wait([f for f in self._firsts if not f.done()], timeout=every,
                               return_when=asyncio.FIRST_EXCEPTION)  # fmt: skip
            if self.waiting and not any(f.done() and f.exception() for f in self._firsts):
                yield
            else:
                break
        await self._check_firsts()

    async def _check_firsts(self) -> None:
        try:
            firsts = [first.result() for first in self._firsts]
        except BaseException:
            await self.aclose()
            raise
        for first in firsts:
            if isinstance(first, ErrorEvent):
                await self.aclose()
                raise from_event(first)

    @property
    def queue_position(self) -> int | None:
        """Requests ahead of the first job when it was queued (known when API keys are in use)."""
        return self._streams[0].queue_position if self._streams else None

    @property
    def ready(self) -> bool:
        """The next event of a single stream is here already (several streams: unknown, False)."""
        return len(self._streams) == 1 and self._streams[0].ready

    def stop_watching_client(self) -> None:
        """From here on the SSE response notices a client that leaves."""
        for stream in self._streams:
            stream.client_gone = None

    def __aiter__(self) -> Choices:
        return self

    async def __anext__(self) -> tuple[int, Event]:
        if len(self._streams) == 1:  # the common case: no tasks needed
            if not self._open:
                raise StopAsyncIteration
            event = await anext(self._streams[0])
            if isinstance(event, (DoneEvent, ErrorEvent)):
                self._open.clear()
            return 0, event
        for index in self._open - set(self._reads.values()):
            self._reads[asyncio.ensure_future(anext(self._streams[index]))] = index
        if not self._reads:
            raise StopAsyncIteration
        done, _ = await asyncio.wait(self._reads, return_when=asyncio.FIRST_COMPLETED)
        read = min(done, key=lambda f: self._reads[f])  # deterministic order among simultaneous events
        index = self._reads.pop(read)
        event = read.result()  # raises the stream's APIError (timeout, worker lost, ...)
        if isinstance(event, (DoneEvent, ErrorEvent)):
            self._open.discard(index)
        return index, event

    async def __aenter__(self) -> Choices:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pending = [first for first in self._firsts if not first.done()]
        for first in pending:
            first.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for read in self._reads:
            read.cancel()
        if self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)
        self._reads.clear()
        for stream in self._streams:
            await stream.aclose()
