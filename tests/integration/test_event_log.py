"""A kept job's events are all in its replay log (a Redis Stream); an unkept job writes none; and
after QUEUECHAT_RESULT_TTL nothing of a kept job is left in Redis."""

from __future__ import annotations

import time

import openai

from protocol import DoneEvent, StartEvent, TokenEvent, decode_event, event_log_key, log_entry_id
from tests.integration.processes import Gateway, eventually


def test_a_stored_request_leaves_its_whole_event_log_with_an_expiry(client: openai.OpenAI, redis_server) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-a", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, temperature=0, store=True
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


def test_an_unkept_request_writes_no_log(client: openai.OpenAI, redis_server) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-a", messages=[{"role": "user", "content": "Hello there"}], max_tokens=4
    )
    assert not redis_server.client.exists(event_log_key(raw.headers["x-request-id"]))


def test_after_the_ttl_nothing_of_a_kept_job_is_left(env, workdir, redis_server, workers) -> None:
    short = Gateway({**env, "QUEUECHAT_RESULT_TTL": "2", "QUEUECHAT_SWEEP_INTERVAL": "0.5"}, workdir)
    try:
        sdk = openai.OpenAI(base_url=f"{short.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        stored = sdk.chat.completions.create(model="tiny-a", messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                             store=True)  # fmt: skip
        background = sdk.responses.create(model="tiny-a", input="y", max_output_tokens=4, background=True)
        assert eventually(lambda: sdk.responses.retrieve(background.id).status != "queued"
                          and sdk.responses.retrieve(background.id).completed_at is not None, timeout=30)  # fmt: skip
        ids = (stored.id, background.id)

        def leftovers() -> list[bytes]:
            return [k for k in redis_server.client.scan_iter(count=1000) if any(i.encode() in k for i in ids)]

        assert leftovers()  # while they live
        time.sleep(2)
        assert eventually(lambda: not leftovers(), timeout=10), leftovers()
    finally:
        short.stop()
