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


def _cancel_keys(client) -> list[str]:
    return [k.decode() for k in client.scan_iter(match=f"{KEY_PREFIX}cancel:*", count=1000)]


def test_every_other_key_expires_by_itself(redis_server, client) -> None:
    """Cancel keys and kombu's bookkeeping carry a TTL; per-request state never piles up."""
    sdk, client = client, redis_server.client
    if not _cancel_keys(client):  # the suite's own have expired (it ran longer than their TTL)
        stream = sdk.chat.completions.create(model="tiny-a", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=1000, stream=True)  # fmt: skip
        next(iter(stream))
        stream.close()  # a client that leaves mid-stream: the gateway writes a cancel key
    assert _wait(lambda: bool(_cancel_keys(client)), 10), "no request was cancelled"
    keys = [k.decode() for k in client.scan_iter(count=1000)]
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
