"""Worker heartbeats in the registry (fakeredis): live set, free slots, and tidying of dead workers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import fakeredis

from workers.lifecycle import WorkerState
from protocol import MODELS_SEEN_KEY, live_workers_key, slots_key, stats_key
from workers.settings import WorkerSettings


def _state(client, engines) -> WorkerState:
    return WorkerState("w1@host", WorkerSettings(heartbeat_ttl=3.0), client, engines, outbox=None)  # type: ignore[arg-type]


def test_a_beat_announces_each_model_with_its_free_slots() -> None:
    client = fakeredis.FakeRedis()
    _state(client, {"m": SimpleNamespace(free_slots=3, slots=8, stats=lambda: {"running": 5, "slots": 8, "tokens": 42})}).beat()
    assert client.zscore(live_workers_key("m"), "w1@host") is not None
    assert client.hget(slots_key("m"), "w1@host") == b"3/8"
    assert client.smembers(MODELS_SEEN_KEY) == {b"m"}
    assert json.loads(client.hget(stats_key("m"), "w1@host")) == {"running": 5, "slots": 8, "tokens": 42}


def test_a_beat_forgets_workers_dead_for_ten_heartbeat_ttls_in_both_keys() -> None:
    """A SIGKILLed worker cannot withdraw; the survivors remove its entries, so nothing grows."""
    client = fakeredis.FakeRedis()
    seconds, _ = client.time()
    client.zadd(live_workers_key("m"), {"killed@host": seconds - 60, "recent@host": seconds - 5})
    client.hset(slots_key("m"), mapping={"killed@host": "0/8", "recent@host": "8/8"})
    client.hset(stats_key("m"), mapping={"killed@host": "{}"})
    _state(client, {"m": SimpleNamespace(free_slots=8, slots=8, stats=lambda: {"running": 0, "slots": 8, "tokens": 0})}).beat()
    assert set(client.zrange(live_workers_key("m"), 0, -1)) == {b"w1@host", b"recent@host"}
    assert set(client.hkeys(slots_key("m"))) == {b"w1@host", b"recent@host"}
    assert set(client.hkeys(stats_key("m"))) == {b"w1@host"}
