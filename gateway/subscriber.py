"""One Redis subscriber connection per gateway, shared by every request it relays.

Each request's events arrive on its own channel.  Instead of one pub/sub connection per request
(thousands of sockets, and Redis's client limit shared by all gateways), one `Subscriber` holds
one connection, subscribes and unsubscribes channels as requests come and go, and one reader
task hands each message to the request's `Inbox`, an in-memory queue bounded in bytes: a client
that reads more slowly than the model writes is cut off with an error once its inbox passes the
limit, so no client can make the gateway's memory grow without bound.

Connection loss.  redis-py reconnects a pub/sub connection by itself and subscribes again to
every channel it knew; events published in between are lost.  Both ways it shows: the read
raises (then the reader backs off and reads again, which reconnects), or a subscription is
confirmed a second time.  Either way every inbox concerned gets `GAP`: a request whose events
are also in its event log reads the log to fill the gap; any other fails cleanly (EventStream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final

import redis.exceptions
from redis.asyncio import Redis

from gateway.errors import APIError, ServiceUnavailable

log = logging.getLogger(__name__)

GAP: Final = b""  # in place of a message: events may have been lost here (no event is empty)
_LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


async def _as_is(response: list) -> list:
    return response


class ClientTooSlow(APIError):
    status = 429
    type = "rate_limit_error"
    code = "client_too_slow"


class Inbox:
    """The messages of one channel for one reader, in order, at most `limit` bytes of them."""

    __slots__ = ("channel", "limit", "_items", "_bytes", "_waiter", "_failure")

    def __init__(self, channel: bytes, limit: int) -> None:
        self.channel = channel
        self.limit = limit
        self._items: deque[bytes] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._failure: APIError | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._items.append(data)
        self._bytes += len(data)
        if self._bytes > self.limit:
            self._items.clear()
            self._failure = ClientTooSlow(
                f"The client read this stream more slowly than the model wrote it; more than {self.limit} bytes "
                "of events waited for it, so the stream was stopped."
            )
        self._wake()

    @property
    def stopped(self) -> bool:
        """Its reader was too slow: nothing more is delivered to it."""
        return self._failure is not None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: float) -> bytes | None:
        """The next message (or GAP); None if none came within `timeout` seconds."""
        if not self._items and self._failure is None:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._failure is not None:
            raise self._failure
        if not self._items:
            return None
        data = self._items.popleft()
        self._bytes -= len(data)
        return data


class _Channel:
    __slots__ = ("inboxes", "confirmed")

    def __init__(self, confirmed: asyncio.Future[None]) -> None:
        self.inboxes: list[Inbox] = []
        self.confirmed = confirmed


class Subscriber:
    """The gateway's subscriptions, on one connection taken from `redis`'s pool."""

    def __init__(self, redis: Redis, buffer_bytes: int = 1 << 20, confirm_timeout: float = 5.0,
                 health_interval: float = 5.0) -> None:  # fmt: skip
        self.health_interval = health_interval
        self.buffer_bytes = buffer_bytes
        self.confirm_timeout = confirm_timeout
        # redis-py's default handler of pub/sub replies formats a debug line for each message
        # (whether or not debug logging is on): a third of the reader's time
        self._pubsub = redis.pubsub(push_handler_func=_as_is)
        self._channels: dict[bytes, _Channel] = {}
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # Commands and (re)connections one at a time: two first subscribers would otherwise each
        # take a connection from the pool (one of them never read), two reconnects open two sockets.
        self._lock = asyncio.Lock()
        self.reconnects = 0  # times the connection was lost while channels were subscribed
        self._down = False  # lost, not read from since: the inboxes have their GAP already

    @property
    def channels(self) -> int:
        return len(self._channels)

    async def open(self, channel: str) -> Inbox:
        """An inbox for `channel`, once Redis has confirmed the subscription (subscribe before
        sending: nothing published after this returns is missed)."""
        if self._down:
            raise ServiceUnavailable("The gateway lost its connection to the queue; retry shortly.",
                                     code="queue_unavailable", headers={"Retry-After": "1"})  # fmt: skip
        name = channel.encode()
        inbox = Inbox(name, self.buffer_bytes)
        entry = self._channels.get(name)
        first = entry is None
        if entry is None:
            entry = self._channels[name] = _Channel(asyncio.get_running_loop().create_future())
        entry.inboxes.append(inbox)
        try:
            if first:
                async with self._lock:
                    await self._pubsub.subscribe(name)
                self._connected.set()
                self._start_reader()
            await asyncio.wait_for(asyncio.shield(entry.confirmed), self.confirm_timeout)
        except BaseException as exc:
            await self.close(inbox)
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                await self._lost(exc)  # a connection that does not confirm is as good as dead
                raise ServiceUnavailable("Redis did not confirm the subscription.", code="queue_unavailable") from exc
            raise
        return inbox

    async def close(self, inbox: Inbox) -> None:
        """Stop delivering to `inbox`; unsubscribe its channel once no inbox reads it."""
        entry = self._channels.get(inbox.channel)
        if entry is None or inbox not in entry.inboxes:
            return
        entry.inboxes.remove(inbox)
        if entry.inboxes:
            return
        del self._channels[inbox.channel]
        if not entry.confirmed.done():
            entry.confirmed.cancel()
        await self._unsubscribe(inbox.channel)

    async def _unsubscribe(self, name: bytes) -> None:
        try:
            async with self._lock:
                if self._pubsub.connection is not None and self._pubsub.connection.is_connected:
                    await self._pubsub.unsubscribe(name)
                    return
        except redis.exceptions.RedisError as exc:
            log.warning("could not unsubscribe %s: %s", name.decode(errors="replace"), exc)
        # Not sent: make sure a reconnect does not subscribe it again (a late confirmation of
        # a channel nobody reads is unsubscribed by the reader, too).
        self._pubsub.channels.pop(name, None)
        self._pubsub.pending_unsubscribe_channels.discard(name)

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="queuechat-subscriber")

    async def _read_forever(self) -> None:
        """Read the connection, reconnecting with a growing pause while Redis is away.  Messages
        take the short way (redis-py's `get_message` costs twice as much per message); anything
        else goes through redis-py's own bookkeeping.  A connection silent for `health_interval`
        is sent a PING; one that does not answer within as long again is dropped and made anew
        (a peer gone without a word would otherwise hold every subscription on a dead socket)."""
        backoff, silent_since, pinged = 0.05, time.monotonic(), False
        while True:
            connection = self._pubsub.connection
            if connection is None:
                self._connected.clear()
                await self._connected.wait()
                continue
            try:
                if not connection.is_connected:
                    async with self._lock:
                        await connection.connect()  # redis-py subscribes again to every channel it knows
                    self._down = False
                response = await connection.read_response(timeout=1.0, disconnect_on_error=False, push_request=True)
            except _LOST as exc:
                await self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except Exception:  # noqa: BLE001  (a reader that dies strands every stream: log and go on)
                log.exception("the subscriber's reader failed; reading on")
                await asyncio.sleep(backoff)
                continue
            if response is None:  # a second of silence
                silent = time.monotonic() - silent_since
                if silent > 2 * self.health_interval and pinged:
                    await self._lost(ConnectionError(f"no answer to a PING in {self.health_interval:g} s"))
                elif silent > self.health_interval and not pinged:
                    pinged = True
                    try:
                        await self._pubsub.ping()
                    except _LOST as exc:
                        await self._lost(exc)
                continue
            backoff, silent_since, pinged, self._down = 0.05, time.monotonic(), False, False
            if isinstance(response, list) and response[0] == b"message":
                entry = self._channels.get(response[1])
                if entry is not None:
                    for inbox in entry.inboxes:
                        inbox.put(response[2])
                    if entry.inboxes[0].stopped and all(inbox.stopped for inbox in entry.inboxes):  # (one, as a rule)
                        # every reader of it was stopped (too slow): stop listening, so that the
                        # worker, whose events now reach nobody, stops the job and frees its slot
                        del self._channels[response[1]]
                        asyncio.get_running_loop().create_task(self._unsubscribe_orphan(response[1]))
            elif (message := await self._pubsub.handle_message(response)) is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict) -> None:
        """Subscription confirmations: the first one lets `open` return; a second one means the
        connection was made anew in between."""
        if message["type"] != "subscribe":
            return
        name = message["channel"]
        entry = self._channels.get(name)
        if entry is None:  # its reader left before Redis confirmed (or it came back on a reconnect)
            asyncio.get_running_loop().create_task(self._unsubscribe_orphan(name))
        elif not entry.confirmed.done():
            entry.confirmed.set_result(None)
        else:  # subscribed again after a reconnect: whatever was published in between is lost
            for inbox in entry.inboxes:
                inbox.put(GAP)

    async def _unsubscribe_orphan(self, name: bytes) -> None:
        if name not in self._channels:
            await self._unsubscribe(name)

    async def _lost(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            if self._channels:
                self.reconnects += 1
                log.warning("lost the subscriber connection to Redis (%s): %d request(s) may have lost events",
                            exc, len(self._channels))  # fmt: skip
            for entry in self._channels.values():
                for inbox in entry.inboxes:
                    inbox.put(GAP)
        connection = self._pubsub.connection
        if connection is not None:
            try:
                await connection.disconnect()  # no half-dead socket left behind; the next read reconnects
            except Exception:  # noqa: BLE001
                pass

    async def aclose(self) -> None:
        if self._reader is not None:
            for _ in range(5):  # redis-py can swallow a cancellation that lands as a command is sent
                self._reader.cancel()
                done, _ = await asyncio.wait({self._reader}, timeout=1.0)
                if done:
                    break
        for entry in self._channels.values():
            if not entry.confirmed.done():
                entry.confirmed.cancel()
        self._channels.clear()
        await self._pubsub.aclose()
