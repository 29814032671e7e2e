"""CancelWatch: every running request's cancel key read in one round trip per poll."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from protocol import cancel_key_for
from workers.cancels import CancelWatch


class CountingRedis(fakeredis.FakeRedis):
    """Counts pipelines executed (round trips)."""

    trips = 0

    def pipeline(self, *args, **kwargs):  # type: ignore[override]
        pipe = super().pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*a, **k):
            CountingRedis.trips += 1
            return execute(*a, **k)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


def test_one_reading_serves_every_watched_request_and_finds_the_cancelled() -> None:
    client = CountingRedis()
    CountingRedis.trips = 0
    watch = CancelWatch(client, every=60.0)
    ids = [f"req-{i}" for i in range(200)]
    for request_id in ids:
        watch.watch(request_id)
    client.set(cancel_key_for("req-7"), 1)
    client.set(cancel_key_for("req-150"), 1)
    found = [request_id for request_id in ids if watch.cancelled(request_id)]
    assert found == ["req-7", "req-150"]
    assert CountingRedis.trips == 1  # 200 checks, one round trip


def test_a_new_reading_comes_once_the_last_is_old() -> None:
    client = fakeredis.FakeRedis()
    watch = CancelWatch(client, every=0.0)
    watch.watch("a")
    assert not watch.cancelled("a")
    client.set(cancel_key_for("a"), 1)
    assert watch.cancelled("a")
    watch.forget("a")
    assert not watch.cancelled("a")


def test_a_failed_reading_raises_in_every_asking_thread_until_one_succeeds() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    watch = CancelWatch(client, every=0.0)
    watch.watch("a")
    watch.watch("b")
    server.connected = False
    with pytest.raises(redis.ConnectionError):
        watch.cancelled("a")
    with pytest.raises(redis.ConnectionError):
        watch.cancelled("b")
    server.connected = True
    assert not watch.cancelled("b")
