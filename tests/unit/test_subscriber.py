"""The gateway's one subscriber connection (gateway/subscriber.py) over fakeredis: every request's
channel on one pub/sub connection, each message handed to the inboxes of its channel in order,
an inbox bounded in unread bytes (ClientTooSlow), channels unsubscribed as their last reader
leaves, GAP for every inbox when the connection is lost.

What fakeredis cannot show (a connection cut by the server, a real client that stops reading)
is in tests/integration/adversarial/test_subscriber_faults.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from gateway.errors import ServiceUnavailable
from gateway.subscriber import GAP, ClientTooSlow, Inbox, Subscriber
from protocol import channel_for

WAIT = 5.0  # the longest any test here waits for one thing


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis(server=FakeServer())


@pytest.fixture
async def subscriber(redis: FakeRedis) -> AsyncIterator[Subscriber]:
    sub = Subscriber(redis, buffer_bytes=1000, confirm_timeout=WAIT)
    yield sub
    await sub.aclose()


async def numsub(redis: FakeRedis, *channels: str) -> list[int]:
    return [count for _, count in await redis.pubsub_numsub(*channels)]


async def eventually(condition: Callable[[], object], timeout: float = WAIT) -> bool:
    """Whether the (sync or async) `condition` holds within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() > deadline:
            return bool(result)
        await asyncio.sleep(0.02)


async def unsubscribed(redis: FakeRedis, name: str) -> bool:
    """Whether nobody is subscribed to `name` within WAIT seconds."""

    async def gone() -> bool:
        return await numsub(redis, name) == [0]

    return await eventually(gone)


async def receive(inbox: Inbox, count: int) -> list[bytes]:
    """The next `count` messages of `inbox`, failing if any takes longer than WAIT."""
    received = []
    for _ in range(count):
        data = await inbox.get(WAIT)
        assert data is not None, f"nothing came on {inbox.channel!r} after {received!r}"
        received.append(data)
    return received


def pool_connections(redis: FakeRedis) -> int:
    """Connections the client's pool has made (in use or idle)."""
    pool = redis.connection_pool
    return len(pool._in_use_connections) + len(pool._available_connections)


async def test_many_channels_share_one_pubsub_connection(redis: FakeRedis, subscriber: Subscriber) -> None:
    names = [channel_for(f"req-{i}") for i in range(40)]
    inboxes = [await subscriber.open(name) for name in names]
    assert await numsub(redis, *names) == [1] * len(names)
    assert subscriber.channels == len(names)
    # one pub/sub connection for all 40, plus the one the commands above used: not one per channel
    assert pool_connections(redis) == 2
    assert subscriber._pubsub.connection in redis.connection_pool._in_use_connections
    for i, name in enumerate(names):
        await redis.publish(name, f"for {i}".encode())
    for i, inbox in enumerate(inboxes):
        assert await receive(inbox, 1) == [f"for {i}".encode()]  # to its own channel's inbox only
        assert await inbox.get(0.01) is None
    assert pool_connections(redis) == 2


async def test_readers_that_come_together_still_share_one_connection(redis: FakeRedis) -> None:
    """The first subscriptions at once (a burst on a fresh gateway): one connection, which the
    reader reads; none of them waits in vain for a confirmation."""
    sub = Subscriber(redis, confirm_timeout=2.0)
    try:
        names = [channel_for(f"burst-{i}") for i in range(10)]
        inboxes = await asyncio.gather(*(sub.open(name) for name in names))
        assert pool_connections(redis) == 1  # the pub/sub connection alone
        assert await numsub(redis, *names) == [1] * len(names)
        for name in names:
            await redis.publish(name, name.encode())
        for name, inbox in zip(names, inboxes):
            assert await receive(inbox, 1) == [name.encode()]
    finally:
        await sub.aclose()


async def test_two_readers_of_one_channel_both_get_everything(
    redis: FakeRedis, subscriber: Subscriber
) -> None:
    name = channel_for("common")
    first, second = await subscriber.open(name), await subscriber.open(name)
    assert await numsub(redis, name) == [1]  # subscribed once for both
    messages = [f"m{i}".encode() for i in range(20)]
    for message in messages:
        await redis.publish(name, message)
    assert await receive(first, 20) == messages
    assert await receive(second, 20) == messages

    await subscriber.close(first)
    assert subscriber.channels == 1
    assert await numsub(redis, name) == [1]  # the other one still reads it
    await redis.publish(name, b"after")
    assert await receive(second, 1) == [b"after"]
    assert await first.get(0.05) is None  # closed: nothing more for it

    await subscriber.close(second)
    assert subscriber.channels == 0
    assert await unsubscribed(redis, name)


async def test_messages_arrive_in_order(redis: FakeRedis) -> None:
    sub = Subscriber(redis, buffer_bytes=1 << 16)
    try:
        a, b = channel_for("a"), channel_for("b")
        inbox_a, inbox_b = await sub.open(a), await sub.open(b)
        expected_a, expected_b = [], []
        for i in range(300):  # interleaved on the one connection
            expected_a.append(f"a{i}".encode())
            expected_b.append(f"b{i}".encode())
            await redis.publish(a, expected_a[-1])
            await redis.publish(b, expected_b[-1])
        assert await receive(inbox_a, 300) == expected_a
        assert await receive(inbox_b, 300) == expected_b
    finally:
        await sub.aclose()


async def test_a_reader_that_falls_behind_is_stopped_and_others_go_on(
    redis: FakeRedis, subscriber: Subscriber
) -> None:
    slow_name, fast_name = channel_for("slow"), channel_for("fast")
    slow, fast = await subscriber.open(slow_name), await subscriber.open(fast_name)
    chunk = b"x" * 100  # buffer_bytes is 1000: the 11th unread message passes it
    for i in range(10):
        await redis.publish(slow_name, chunk)
        await redis.publish(fast_name, b"%d" % i)
        assert await receive(fast, 1) == [b"%d" % i]
    assert await eventually(lambda: len(slow) == 10)  # exactly at the limit: still fine
    assert await slow.get(WAIT) == chunk
    await redis.publish(slow_name, chunk)  # back to 1000 bytes unread
    await redis.publish(slow_name, chunk)  # 1100
    await redis.publish(fast_name, b"after")
    assert await receive(fast, 1) == [b"after"]  # the message after the overflow has been dispatched
    assert len(slow) == 0  # its messages are dropped at once, not kept until it reads
    with pytest.raises(ClientTooSlow) as info:
        await slow.get(WAIT)
    assert (info.value.status, info.value.code) == (429, "client_too_slow")
    # nobody will read it any more: unsubscribed at once (a worker publishing to it stops the job)
    assert await unsubscribed(redis, slow_name)
    assert subscriber.channels == 1

    for _ in range(20):  # more for the stopped reader is not kept either
        await redis.publish(slow_name, chunk)
    await redis.publish(fast_name, b"last")
    assert await receive(fast, 1) == [b"last"]
    assert len(slow) == 0
    with pytest.raises(ClientTooSlow):  # and it stays stopped
        await slow.get(0.01)
    assert await numsub(redis, fast_name) == [1]
    await subscriber.close(slow)  # what its stream does next: harmless
    assert subscriber.channels == 1 and await numsub(redis, fast_name) == [1]


async def test_a_channel_stays_subscribed_while_one_of_its_readers_keeps_up(
    redis: FakeRedis, subscriber: Subscriber
) -> None:
    name = channel_for("two-speeds")
    slow, steady = await subscriber.open(name), await subscriber.open(name)
    for i in range(30):  # 30 x 100 bytes, three times the buffer
        await redis.publish(name, b"%03d" % i + b"z" * 97)
        [data] = await receive(steady, 1)
        assert data.startswith(b"%03d" % i)
    with pytest.raises(ClientTooSlow):
        await slow.get(0.01)
    assert await numsub(redis, name) == [1] and subscriber.channels == 1
    await redis.publish(name, b"more")
    assert await receive(steady, 1) == [b"more"]


async def test_a_reader_that_keeps_up_is_never_stopped(redis: FakeRedis, subscriber: Subscriber) -> None:
    """The bound is on unread bytes, not on a stream's total."""
    name = channel_for("steady")
    inbox = await subscriber.open(name)
    for i in range(50):  # 50 x 100 bytes: five times the buffer, read as it comes
        await redis.publish(name, b"%03d" % i + b"y" * 97)
        [data] = await receive(inbox, 1)
        assert data.startswith(b"%03d" % i)


async def test_closing_the_last_reader_unsubscribes(redis: FakeRedis, subscriber: Subscriber) -> None:
    names = [channel_for(f"close-{i}") for i in range(3)]
    inboxes = [await subscriber.open(name) for name in names]
    await subscriber.close(inboxes[1])
    await subscriber.close(inboxes[1])  # twice is harmless
    assert await unsubscribed(redis, names[1])
    assert await numsub(redis, names[0], names[2]) == [1, 1]
    assert subscriber.channels == 2
    await redis.publish(names[1], b"nobody")
    await redis.publish(names[0], b"somebody")
    assert await receive(inboxes[0], 1) == [b"somebody"]
    assert await inboxes[1].get(0.05) is None
    for inbox in inboxes:
        await subscriber.close(inbox)
    assert subscriber.channels == 0
    for name in names:
        assert await unsubscribed(redis, name)


async def test_a_confirmation_for_a_channel_nobody_reads_isunsubscribed(
    redis: FakeRedis, subscriber: Subscriber
) -> None:
    """As after a reconnect that subscribed again to a channel whose reader had left meanwhile:
    the subscriber's connection is subscribed to a channel it has no inbox for."""
    kept, orphan = channel_for("kept"), channel_for("orphan")
    inbox = await subscriber.open(kept)  # the reader runs
    await subscriber._pubsub.subscribe(orphan)  # confirmed to the reader, for no inbox
    assert await unsubscribed(redis, orphan)
    assert subscriber.channels == 1 and await numsub(redis, kept) == [1]
    await redis.publish(kept, b"still here")
    assert await receive(inbox, 1) == [b"still here"]


def hold_confirmations(subscriber: Subscriber) -> list[dict]:
    """Keep Redis's subscription confirmations from the subscriber (as a slow Redis would) in
    the returned list; `release` hands them over."""
    held: list[dict] = []
    dispatch = subscriber._dispatch

    def holding(message: dict) -> None:
        if message["type"] == "subscribe":
            held.append(message)
        else:
            dispatch(message)

    subscriber._dispatch = holding
    return held


def release(subscriber: Subscriber, held: list[dict]) -> None:
    del subscriber._dispatch  # the class's own again
    while held:
        subscriber._dispatch(held.pop(0))


async def test_a_reader_that_leaves_before_the_confirmation_leaves_nothing_subscribed(
    redis: FakeRedis, subscriber: Subscriber
) -> None:
    await subscriber.open(channel_for("running"))
    name = channel_for("impatient")
    held = hold_confirmations(subscriber)
    opening = asyncio.create_task(subscriber.open(name))
    assert await eventually(lambda: held)  # subscribed, not confirmed yet
    assert await numsub(redis, name) == [1]
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert subscriber.channels == 1
    assert await unsubscribed(redis, name)
    release(subscriber, held)  # the late confirmation, for nobody
    await asyncio.sleep(0.1)
    assert await numsub(redis, name) == [0]
    other = await subscriber.open(channel_for("next"))  # the connection still serves
    await redis.publish(channel_for("next"), b"ok")
    assert await receive(other, 1) == [b"ok"]


async def test_a_subscription_never_confirmed_is_queue_unavailable_and_the_connection_made_anew(
    redis: FakeRedis,
) -> None:
    sub = Subscriber(redis, confirm_timeout=0.3)
    try:
        running = await sub.open(channel_for("running"))
        held = hold_confirmations(sub)
        with pytest.raises(ServiceUnavailable) as info:
            await sub.open(channel_for("unconfirmed"))
        assert info.value.code == "queue_unavailable"
        assert sub.channels == 1
        assert await running.get(WAIT) == GAP  # the connection was dropped: events may be lost
        with pytest.raises(ServiceUnavailable):  # until the reader has made the connection anew
            await sub.open(channel_for("too-early"))
        release(sub, held)
        assert await eventually(lambda: not sub._down)
        fresh = await sub.open(channel_for("fresh"))
        assert await unsubscribed(redis, channel_for("unconfirmed"))
        await redis.publish(channel_for("fresh"), b"ok")
        assert await receive(fresh, 1) == [b"ok"]
    finally:
        await sub.aclose()


async def test_get_returns_none_when_nothing_comes(subscriber: Subscriber) -> None:
    inbox = await subscriber.open(channel_for("quiet"))
    started = time.monotonic()
    assert await inbox.get(0.2) is None
    assert 0.19 <= time.monotonic() - started < 2


async def test_get_wakes_as_soon_as_a_message_comes(redis: FakeRedis, subscriber: Subscriber) -> None:
    name = channel_for("waiting")
    inbox = await subscriber.open(name)
    started = time.monotonic()
    asyncio.get_running_loop().call_later(0.1, lambda: asyncio.ensure_future(redis.publish(name, b"hello")))
    assert await inbox.get(WAIT) == b"hello"
    assert time.monotonic() - started < 2  # not after the whole timeout


async def test_a_lost_connection_gives_every_inbox_a_gap_then_delivers_again(
    redis: FakeRedis, subscriber: Subscriber
) -> None:
    names = [channel_for("gap-a"), channel_for("gap-b")]
    inboxes = [await subscriber.open(name) for name in names]
    reader = subscriber._reader
    await subscriber._pubsub.connection.disconnect()  # under the reader, as a cut socket would be
    for inbox in inboxes:
        assert await inbox.get(WAIT) == GAP
    # (fakeredis shows the loss as the subscriptions confirmed again, not as a failed read, and
    # keeps the old socket's subscriptions: Redis's side is checked in test_subscriber_faults.py)
    assert subscriber._reader is reader and not reader.done()  # the same reader reads on
    assert await eventually(lambda: not subscriber._down)  # connected again
    await asyncio.sleep(0.1)  # let any second confirmation (another GAP) through first
    for name in names:
        await redis.publish(name, b"again")
    for inbox in inboxes:
        data = [await inbox.get(WAIT)]
        while data[-1] == GAP and len(data) < 3:  # another GAP or so first, at most
            data.append(await inbox.get(WAIT))
        assert data[-1] == b"again", data
    assert isinstance(await subscriber.open(channel_for("gap-c")), Inbox)  # new readers are accepted again


async def test_no_new_reader_while_the_connection_is_down(subscriber: Subscriber) -> None:
    await subscriber.open(channel_for("before"))
    subscriber._down = True  # lost, not yet made again
    with pytest.raises(ServiceUnavailable) as info:
        await subscriber.open(channel_for("during"))
    assert info.value.code == "queue_unavailable"
    assert subscriber.channels == 1


async def test_aclose_cancels_the_reader_and_releases_the_connection(redis: FakeRedis) -> None:
    sub = Subscriber(redis)
    await sub.open(channel_for("one"))
    await sub.open(channel_for("two"))
    reader = sub._reader
    assert reader is not None and not reader.done()
    await asyncio.wait_for(sub.aclose(), WAIT)
    assert reader.cancelled()
    assert sub.channels == 0
    assert sub._pubsub.connection is None
    assert not redis.connection_pool._in_use_connections  # the pub/sub connection went back
