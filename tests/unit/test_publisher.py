"""The publisher (fakeredis): events go live on the request's channel and into its replay log,
in one round trip, numbered alike; the log always carries an expiry."""

from __future__ import annotations

import fakeredis

from protocol import (
    DoneEvent,
    StartEvent,
    TokenEvent,
    Usage,
    channel_for,
    decode_event,
    event_log_key,
    log_entry_id,
)
from workers.publisher import EventPublisher, Outbox


def _log(client: fakeredis.FakeRedis, request_id: str) -> list[tuple[str, object]]:
    return [(entry_id.decode(), decode_event(fields[b"event"])) for entry_id, fields in
            client.xrange(event_log_key(request_id))]  # fmt: skip


def test_events_go_live_and_into_the_log_numbered_alike() -> None:
    client = fakeredis.FakeRedis()
    listener = client.pubsub()
    listener.subscribe(channel_for("r1"))
    listener.get_message(timeout=1)
    publisher = EventPublisher(client, "r1", log_ttl=60)
    publisher.start(worker="w1", prompt_tokens=3)  # sent at once
    outbox = Outbox(client)
    publisher.buffered(outbox)
    publisher.token("Hel")
    publisher.token("lo")
    assert _log(client, "r1") == [("0-1", StartEvent(seq=0, worker="w1", prompt_tokens=3))]  # not flushed yet
    outbox.flush()
    publisher.done("stop", Usage(prompt_tokens=3, completion_tokens=2))
    outbox.flush()
    live = [decode_event(m["data"]) for _ in range(4) if (m := listener.get_message(timeout=1))]
    logged = _log(client, "r1")
    assert [event for _, event in logged] == live
    assert [entry for entry, _ in logged] == [log_entry_id(seq) for seq in range(4)]
    assert live[1] == TokenEvent(seq=1, text="Hel") and isinstance(live[3], DoneEvent)
    assert 0 < client.ttl(event_log_key("r1")) <= 60
    assert not publisher.orphaned


def test_no_log_when_asked_for_none_and_orphans_are_still_noticed() -> None:
    client = fakeredis.FakeRedis()
    publisher = EventPublisher(client, "r2", log_ttl=None)
    outbox = Outbox(client)
    publisher.buffered(outbox).token("x")  # nobody subscribed
    outbox.flush()
    assert publisher.orphaned
    assert not client.exists(event_log_key("r2"))
    logged = EventPublisher(client, "r3", log_ttl=5).buffered(outbox)
    logged.token("y")
    outbox.flush()
    assert logged.orphaned and client.xlen(event_log_key("r3")) == 1  # logged even with no listener
