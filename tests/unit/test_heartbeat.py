"""Worker heartbeats in the registry (fakeredis): live set, free slots, and tidying of dead workers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import fakeredis

from protocol import (
    EMBEDS,
    GENERATES,
    MODELS_SEEN_KEY,
    ModelCard,
    ModelFailure,
    cards_key,
    failures_key,
    live_workers_key,
    slots_key,
    stats_key,
)
from workers.heartbeat import WorkerState
from workers.settings import WorkerSettings

CHAT_CARD = ModelCard(capabilities=GENERATES, max_model_len=2048)


def _engine(free: int = 8, slots: int = 8, stats: dict | None = None, card: ModelCard = CHAT_CARD) -> SimpleNamespace:
    stats = stats or {"running": slots - free, "slots": slots, "tokens": 0}
    return SimpleNamespace(free_slots=free, slots=slots, stats=lambda: stats, card=lambda: card, close=lambda: None)


def _state(client, engines) -> WorkerState:
    return WorkerState("w1@host", WorkerSettings(heartbeat_ttl=3.0), client, engines, outbox=None)  # type: ignore[arg-type]


def test_a_beat_announces_each_model_with_its_free_slots() -> None:
    client = fakeredis.FakeRedis()
    embedder = ModelCard(capabilities=EMBEDS, max_model_len=512)
    _state(client, {"m": _engine(3, 8, {"running": 5, "slots": 8, "tokens": 42}), "e": _engine(card=embedder)}).beat()
    assert client.zscore(live_workers_key("m"), "w1@host") is not None
    assert client.hget(slots_key("m"), "w1@host") == b"3/8"
    assert client.smembers(MODELS_SEEN_KEY) == {b"m", b"e"}
    assert json.loads(client.hget(stats_key("m"), "w1@host")) == {"running": 5, "slots": 8, "tokens": 42}
    assert ModelCard.model_validate_json(client.hget(cards_key("m"), "w1@host")) == CHAT_CARD
    assert ModelCard.model_validate_json(client.hget(cards_key("e"), "w1@host")) == embedder


def test_a_beat_forgets_workers_dead_for_ten_heartbeat_ttls_in_both_keys() -> None:
    """A SIGKILLed worker cannot withdraw; the survivors remove its entries, so nothing grows."""
    client = fakeredis.FakeRedis()
    seconds, _ = client.time()
    client.zadd(live_workers_key("m"), {"killed@host": seconds - 60, "recent@host": seconds - 5})
    client.hset(slots_key("m"), mapping={"killed@host": "0/8", "recent@host": "8/8"})
    client.hset(stats_key("m"), mapping={"killed@host": "{}"})
    client.hset(cards_key("m"), mapping={"killed@host": "{}"})
    _state(client, {"m": _engine()}).beat()
    assert set(client.zrange(live_workers_key("m"), 0, -1)) == {b"w1@host", b"recent@host"}
    assert set(client.hkeys(slots_key("m"))) == {b"w1@host", b"recent@host"}
    assert set(client.hkeys(stats_key("m"))) == {b"w1@host"}
    assert set(client.hkeys(cards_key("m"))) == {b"w1@host"}


def test_a_beat_says_which_models_failed_to_load_and_tidies_old_failures() -> None:
    client = fakeredis.FakeRedis()
    seconds, _ = client.time()
    old = ModelFailure(reason="gone long ago", at=seconds - 60).model_dump_json()
    client.hset(failures_key("broken"), mapping={"killed@host": old, "w1@host": old})
    client.hset(failures_key("m"), "w1@host", old)  # an earlier run of this worker failed m; now it loads
    state = _state(client, {"m": _engine()})
    state.failures = {"broken": "TypeError: no"}
    state.beat()
    assert set(client.hkeys(failures_key("broken"))) == {b"w1@host"}  # the killed worker's record is tidied
    mine = ModelFailure.model_validate_json(client.hget(failures_key("broken"), "w1@host"))
    assert mine.reason == "TypeError: no" and mine.at >= seconds
    assert client.hlen(failures_key("m")) == 0
    assert client.zscore(live_workers_key("broken"), "w1@host") is None  # failed: not live for it
    assert b"broken" in client.smembers(MODELS_SEEN_KEY)
    state.withdraw()
    assert client.hlen(failures_key("broken")) == 0
