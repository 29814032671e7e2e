"""Every event a worker publishes is also kept in the request's replay log (a Redis Stream)."""

from __future__ import annotations

import openai

from protocol import DoneEvent, StartEvent, TokenEvent, decode_event, event_log_key, log_entry_id


def test_a_request_leaves_its_whole_event_log_with_an_expiry(client: openai.OpenAI, redis_server) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-a", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, temperature=0
    )
    answer = raw.parse()
    key = event_log_key(raw.headers["x-request-id"])
    entries = redis_server.client.xrange(key)
    events = [decode_event(fields[b"event"]) for _, fields in entries]
    assert [entry_id.decode() for entry_id, _ in entries] == [log_entry_id(seq) for seq in range(len(events))]
    assert isinstance(events[0], StartEvent) and isinstance(events[-1], DoneEvent)
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == answer.choices[0].message.content
    assert events[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert 0 < redis_server.client.ttl(key) <= 3600  # QUEUECHAT_RESULT_TTL's default
