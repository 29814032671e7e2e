"""Kept jobs without processes: stream positions and resume points, the Responses renderer (its
events and bodies against OpenAI's schemas, and the same stream when rendered again), input
items, and the job store over fakeredis (settling a job whose worker died, cancelling a queued
one, paging stored jobs, replay that fills a gap from the log)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fakeredis.aioredis import FakeRedis

from gateway.errors import InvalidRequest
from gateway.jobs import JobRecord, JobStore
from gateway.keep import START, Position, numbered, resume_position, sse_after
from gateway.registry import Registry
from gateway.relay import Relay
from gateway.responses_render import ResponseState, replayed, stream_events
from gateway.responses_request import CreateResponseRequest, messages_of
from protocol import (
    DoneEvent,
    ErrorEvent,
    KeepAliveEvent,
    StartEvent,
    TokenEvent,
    Usage,
    cancel_key_for,
    channel_for,
    encode_event,
    event_log_key,
    job_record_key,
    live_workers_key,
    log_entry_id,
)
from protocol.models_file import load_models_file
from tests.spec import assert_valid
from tests.tiny_models import write_models_file

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def events_of(*texts: str, finish: str = "stop", worker: str = "w1") -> list:
    events = [StartEvent(seq=0, worker=worker, prompt_tokens=5)]
    events += [TokenEvent(seq=i + 1, text=t) for i, t in enumerate(texts)]
    events.append(DoneEvent(seq=len(events), finish_reason=finish, usage=Usage(prompt_tokens=5, completion_tokens=len(texts))))
    return events


def record(**request) -> JobRecord:
    return JobRecord(id="resp_abc", kind="response", model="m", request_id="resp_abc", expires_at=time.time() + 60,
                     stored=True, request={"tool_choice": "auto", **request})  # fmt: skip


# -- positions --------------------------------------------------------------------------------


def test_positions_order_events_then_parts_and_parse_from_last_event_id() -> None:
    assert Position(3, 0) < Position(3, 1) < Position(4, 0)
    assert str(Position(7)) == "7" and str(Position(7, 2)) == "7.2"
    assert resume_position("chatcmpl-x", "chatcmpl-x:7.2", None) == Position(7, 2)
    assert resume_position("chatcmpl-x", None, 5) > Position(5, 99)  # every chunk of event 5
    assert resume_position("chatcmpl-x", None, None) == START
    for bad in ("chatcmpl-y:3", "chatcmpl-x:three", "chatcmpl-x:"):
        with pytest.raises(InvalidRequest):
            resume_position("chatcmpl-x", bad, None)


async def test_numbered_chunks_resume_exactly_after_a_position() -> None:
    chunks = [(0, "role"), (1, "a"), (2, "b"), (3, "finish"), (3, "usage"), (3, "[DONE]")]

    async def source():
        for chunk in chunks:
            yield chunk

    whole = [data async for data in sse_after(source(), "id1")]
    assert whole[3].decode() == "id: id1:3\ndata: finish\n\n" and whole[4].startswith(b"id: id1:3.1\n")
    positions = [p async for p, _ in numbered(source())]
    for k, after in enumerate(positions):
        rest = [data async for data in sse_after(source(), "id1", after)]
        assert rest == whole[k + 1:]


# -- the Responses renderer -------------------------------------------------------------------


def test_the_stream_events_and_the_final_body_follow_the_spec() -> None:
    state = ResponseState(record())
    stream = state.opening()
    for event in events_of("Hel", "lo"):
        stream += state.apply(event)
    for number, event in enumerate(stream):
        assert_valid({**event, "sequence_number": number}, "ResponseStreamEvent")
    assert [e["type"] for e in stream] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]  # fmt: skip
    body = state.response()
    assert_valid(body, "Response")
    assert body["status"] == "completed" and body["output"][0]["content"][0]["text"] == "Hello"
    assert body["usage"]["output_tokens"] == 2


def test_statuses_follow_the_events() -> None:
    assert replayed(record(), []).status() == "queued"
    assert replayed(record(), events_of("a")[:1]).status() == "in_progress"
    assert replayed(record(), events_of("a", finish="length")).response()["incomplete_details"] == {"reason": "max_output_tokens"}
    cancelled = replayed(record(), [ErrorEvent(seq=0, code="cancelled", message="stop")])
    assert cancelled.status() == "cancelled"
    failed = replayed(record(), [*events_of("a")[:2], ErrorEvent(seq=2, code="worker_lost", message="gone")]).response()
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "gone"}
    assert_valid(failed, "Response")


def test_a_tool_call_becomes_a_function_call_item_with_the_same_id_every_time() -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": {}, "strict": True, "description": None}]
    bodies = []
    for _ in range(2):
        state = ResponseState(record(tools=tools))
        stream = state.opening()
        for event in events_of(CALL[:20], CALL[20:]):
            stream += state.apply(event)
        for number, event in enumerate(stream):
            assert_valid({**event, "sequence_number": number}, "ResponseStreamEvent")
        bodies.append(state.response())
    assert bodies[0]["output"] == bodies[1]["output"]
    [call] = bodies[0]["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["arguments"] == '{"city": "Paris"}'
    assert_valid(bodies[0], "Response")


async def test_stream_events_resume_after_a_sequence_number() -> None:
    async def source():
        for event in events_of("a", "b", "c"):
            yield event

    whole = [chunk async for chunk in stream_events(ResponseState(record()), source())]
    rest = [chunk async for chunk in stream_events(ResponseState(record()), source(), after=4)]
    assert rest == whole[5:] and b'"sequence_number":5' in rest[0]


# -- input items ------------------------------------------------------------------------------


def test_input_items_become_messages_with_tool_calls_and_outputs() -> None:
    body = CreateResponseRequest(model="m", input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "sunny"}]},
    ])  # fmt: skip
    messages = messages_of(body.input_items())
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[1].tool_calls[0].name == "get_weather" and messages[2].content == "sunny"
    assert messages[2].tool_call_id == "c1"


@pytest.mark.parametrize("item,param", [
    ({"type": "reasoning", "summary": []}, "input[0].type"),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, "input[0].content[0].type"),
    ({"role": "tool", "content": "x"}, "input[0].role"),
])  # fmt: skip
def test_unsupported_input_items_name_the_parameter(item, param) -> None:
    with pytest.raises(InvalidRequest) as error:
        CreateResponseRequest(model="m", input=[item]).input_items()
    assert error.value.param == param


# -- the job store ----------------------------------------------------------------------------


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def store(redis: FakeRedis, tmp_path: Path) -> JobStore:
    models = load_models_file(write_models_file(tmp_path / "models.yaml", {"m": {"path": tmp_path}}))
    return JobStore(redis, Registry(redis, models, 3.0), ttl=60)


async def log(redis: FakeRedis, request_id: str, *events) -> None:
    for event in events:
        await redis.xadd(event_log_key(request_id), {"event": encode_event(event)}, id=log_entry_id(event.seq))


async def test_a_job_whose_worker_died_is_ended_once_as_failed(store: JobStore, redis: FakeRedis) -> None:
    job = record()
    await store.save(job)
    await log(redis, job.request_id, *events_of("a", "b")[:2])
    seconds, _ = await redis.time()
    await redis.zadd(live_workers_key("m"), {"w1": seconds})
    assert len(await store.settled(job)) == 2  # the worker is alive: nothing changes
    await redis.zadd(live_workers_key("m"), {"w1": seconds - 10})
    assert await store.sweep() == 1
    settled = await store.settled(job)
    assert isinstance(settled[-1], ErrorEvent) and settled[-1].code == "worker_lost" and settled[-1].seq == 2
    assert await store.settled(job) == settled  # idempotent
    assert await store.unfinished() == []


async def test_a_job_keeps_the_ttl_of_the_gateway_that_kept_it_whoever_ends_it(store: JobStore, redis: FakeRedis) -> None:
    """Two gateways on one Redis may be set to different TTLs; the one that sweeps a finished job
    first must not give its record (and log) its own."""
    short = JobStore(redis, store.registry, ttl=2)
    job = record()
    await short.save(job)
    await log(redis, job.request_id, *events_of("a"))
    await store.settle((await store.get(job.id)) or job)  # the other gateway (ttl 60) notices the end
    assert 0 < await redis.ttl(job_record_key(job.id)) <= 2
    dead = job.model_copy(update={"id": "resp_d", "request_id": "resp_d"})
    await short.save(dead)
    await log(redis, dead.request_id, *events_of("a")[:1])
    await store.end_with((await store.get(dead.id)) or dead, ErrorEvent(seq=1, code="worker_lost", message="gone"))
    assert 0 < await redis.ttl(event_log_key(dead.request_id)) <= 2
    assert 0 < await redis.ttl(job_record_key(dead.id)) <= 2


async def test_a_late_worker_event_wins_over_the_gateways_verdict(store: JobStore, redis: FakeRedis) -> None:
    job = record()
    await store.save(job)
    events = events_of("a")
    await log(redis, job.request_id, *events)  # the worker finished just before the gateway looked
    assert not await store.end_with(job, ErrorEvent(seq=2, code="worker_lost", message="gone"))
    assert isinstance((await store.settled(job))[-1], DoneEvent)


async def test_cancelling_a_queued_job_ends_it_here_and_tells_the_worker(store: JobStore, redis: FakeRedis) -> None:
    job = record()
    await store.save(job)
    await store.cancel(job)
    assert await redis.exists(cancel_key_for(job.request_id))
    assert replayed(job, await store.settled(job)).status() == "cancelled"


async def test_stored_jobs_page_in_order(store: JobStore) -> None:
    for k in range(5):
        await store.save(JobRecord(id=f"chatcmpl-{k}", kind="chat.completion", model="m", request_id=f"chatcmpl-{k}",
                                   created=int(time.time()) + k, expires_at=time.time() + 60, stored=True))  # fmt: skip
    first = await store.page("chat.completion", None, 2, "asc")
    assert [r.id for r in first] == ["chatcmpl-0", "chatcmpl-1", "chatcmpl-2"]  # one more: there are more
    assert [r.id for r in await store.page("chat.completion", "chatcmpl-3", 2, "asc")] == ["chatcmpl-4"]
    assert [r.id for r in await store.page("chat.completion", None, 1, "desc")][0] == "chatcmpl-4"


async def test_an_attached_stream_replays_the_log_then_fills_a_live_gap_from_it(redis: FakeRedis, store: JobStore) -> None:
    relay = Relay(redis, celery=None, registry=store.registry, queue_timeout=30, idle_timeout=10)  # type: ignore[arg-type]
    seconds, _ = await redis.time()
    await redis.zadd(live_workers_key("m"), {"w1": seconds + 100})
    events = [*events_of("a", "b", "c", "d")[:-1], KeepAliveEvent(seq=5),
              DoneEvent(seq=6, finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=4))]  # fmt: skip
    await log(redis, "r1", *events[:2])
    stream = await relay.attach("r1", "m", on_leave=None)
    async with stream:
        got = [await anext(stream), await anext(stream)]  # from the log
        await log(redis, "r1", *events[2:])
        await redis.publish(channel_for("r1"), encode_event(events[1]))  # a duplicate: dropped
        await redis.publish(channel_for("r1"), encode_event(events[4]))  # events 2-4 missed live: read from the log
        got += [event async for event in stream]
    assert [e.seq for e in got] == [0, 1, 2, 3, 4, 6]  # keep-alives are not yielded
