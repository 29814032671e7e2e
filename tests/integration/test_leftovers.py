"""After everything else (these tests are moved to the end of the session by conftest): the suite
has cancelled, killed, overloaded and fuzzed the stack; nothing of that may remain in Redis or in
the workers.  Run alone, with nothing left behind to inspect, they are skipped (conftest)."""

from __future__ import annotations

import pytest

from protocol import KEY_PREFIX, PERMANENT_KEY_PREFIXES, slots_key
from tests.integration.processes import eventually as _wait

pytestmark = pytest.mark.after_suite


def test_no_subscriptions_are_left_behind(redis_server) -> None:
    assert _wait(lambda: not redis_server.client.pubsub_channels(f"{KEY_PREFIX}events:*"), 10)


def test_every_other_key_expires_by_itself(redis_server) -> None:
    """Cancel keys and kombu's bookkeeping carry a TTL; per-request state never piles up."""
    client = redis_server.client
    keys = [k.decode() for k in client.scan_iter(count=1000)]
    assert any(k.startswith(f"{KEY_PREFIX}cancel:") for k in keys), "the suite cancelled requests"
    forever = [k for k in keys if not k.startswith(PERMANENT_KEY_PREFIXES) and client.ttl(k) == -1]
    assert forever == [], f"keys without an expiry: {forever[:20]}"
    for key in keys:
        if key.startswith(f"{KEY_PREFIX}cancel:"):
            assert 0 < client.ttl(key) <= 400  # queue_timeout (300 s) + a minute


def test_queues_are_empty(redis_server) -> None:
    for queue in ("tiny-a", "tiny-b", "echo-slow", "echo-stuck"):
        assert redis_server.client.llen(queue) == 0, queue


def test_every_live_worker_reports_all_its_slots_free(redis_server, workers) -> None:
    def all_free() -> bool:
        reports = {}
        for model in ("tiny-a", "tiny-b"):
            for worker, value in redis_server.client.hgetall(slots_key(model)).items():
                reports[(model, worker.decode())] = value.decode()
        live = {(q, w.name) for w in workers.values() for q in w.queues}
        return live <= set(reports) and all(reports[k] == "8/8" for k in live)

    assert _wait(all_free, 10), redis_server.client.hgetall(slots_key("tiny-a"))
