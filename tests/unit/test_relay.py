"""Relay and EventStream over fakeredis: subscribe-then-send, ordered events, gaps, cancel, cleanup."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.from_thread
import fakeredis
import kombu.exceptions
import pytest
import redis.exceptions as redis_exceptions
from fakeredis.aioredis import FakeRedis

from gateway.errors import InternalError, InvalidRequest, ModelNotFound, RateLimited, ServiceUnavailable
from gateway.fanout import Choices
from gateway.registry import Registry
from gateway.relay import EventStream, Relay
from gateway.render import Envelope, collect, sse_stream
from gateway.reply import Format, Reply
from protocol import (
    EMBEDS,
    GENERATES,
    MODELS_SEEN_KEY,
    TASK_GENERATE,
    ChatMessage,
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    KeepAliveEvent,
    ModelCard,
    StartEvent,
    TokenEvent,
    Usage,
    cancel_key_for,
    cards_key,
    channel_for,
    encode_event,
    live_workers_key,
)
from protocol.models_file import load_models_file
from tests.spec import assert_valid
from tests.tiny_models import write_models_file

QUEUE_TIMEOUT = 30.0
TTL = 6.0


@dataclass
class Sent:
    name: str
    args: list[Any]
    options: dict[str, Any]
    subscribers: int  # PUBSUB NUMSUB of the request's channel when the task was sent


class RecordingCelery:
    """Stands in for the Celery app: records send_task calls (made from a worker thread)."""

    def __init__(self, redis: FakeRedis, fail: bool = False, error: Exception | None = None) -> None:
        self.redis = redis
        self.error = error or (RuntimeError("broker down") if fail else None)
        self.sent: list[Sent] = []

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        [(_, subscribers)] = anyio.from_thread.run(self.redis.pubsub_numsub, channel_for(options["task_id"]))
        self.sent.append(Sent(name, args, options, subscribers))
        if self.error is not None:
            raise self.error


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server: fakeredis.FakeServer) -> FakeRedis:
    return FakeRedis(server=server)


@pytest.fixture
def registry(redis: FakeRedis, tmp_path: Path) -> Registry:
    models = write_models_file(
        tmp_path / "models.yaml", {"tiny": {"path": tmp_path}, "idle": {"path": tmp_path}}
    )
    return Registry(redis, load_models_file(models), TTL)


@pytest.fixture
def celery(redis: FakeRedis) -> RecordingCelery:
    return RecordingCelery(redis)


@pytest.fixture
def relay(redis: FakeRedis, celery: RecordingCelery, registry: Registry) -> Relay:
    return Relay(redis, celery, registry, queue_timeout=QUEUE_TIMEOUT, idle_timeout=10.0)


async def heartbeat(redis: FakeRedis, model: str, worker: str, age: float = 0.0) -> None:
    seconds, micros = await redis.time()
    await redis.zadd(live_workers_key(model), {worker: seconds + micros / 1e6 - age})


def make_job(model: str = "tiny") -> GenerateJob:
    return GenerateJob(
        request_id=f"cmpl-{time.time_ns()}", model=model, prompt="Hi", expires_at=time.time() + 60
    )


async def publish(redis: FakeRedis, job: GenerateJob, *events: Any) -> None:
    for event in events:
        await redis.publish(
            channel_for(job.request_id), event if isinstance(event, bytes) else encode_event(event)
        )


async def subscribers(redis: FakeRedis, job: GenerateJob) -> int:
    [(_, count)] = await redis.pubsub_numsub(channel_for(job.request_id))
    return count


async def drain(stream: EventStream) -> list[Any]:
    return [event async for event in stream]


START = StartEvent(seq=0, worker="w1", prompt_tokens=2)
DONE = DoneEvent(seq=3, finish_reason="stop", usage=Usage(prompt_tokens=2, completion_tokens=2))
HAPPY = [START, TokenEvent(seq=1, text="Hel"), TokenEvent(seq=2, text="lo"), DONE]


@pytest.fixture
async def live(redis: FakeRedis) -> None:
    await heartbeat(redis, "tiny", "w1")


async def test_submit_subscribes_before_sending(
    relay: Relay, celery: RecordingCelery, redis: FakeRedis, live
) -> None:
    job = make_job()
    async with await relay.submit(job):
        [sent] = celery.sent
        assert sent.subscribers == 1
        assert sent.name == TASK_GENERATE
        assert sent.options["queue"] == "tiny"
        assert sent.options["task_id"] == job.request_id
        assert sent.options["expires"] == datetime.fromtimestamp(job.expires_at, tz=UTC)
        assert GenerateJob.model_validate(sent.args[0]) == job


async def test_events_come_in_order_and_stop_after_done(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    async with await relay.submit(job) as stream:
        await publish(redis, job, *HAPPY, TokenEvent(seq=4, text="late"))
        assert await drain(stream) == HAPPY
        assert await drain(stream) == []


async def test_seq_gap_is_an_internal_error(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    async with await relay.submit(job) as stream:
        await publish(redis, job, START, TokenEvent(seq=2, text="skipped one"))
        assert await anext(stream) == START
        with pytest.raises(InternalError) as info:
            await anext(stream)
        assert info.value.code == "event_gap"


async def test_stream_not_starting_at_zero_is_a_gap(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    async with await relay.submit(job) as stream:
        await publish(redis, job, TokenEvent(seq=1, text="x"))
        with pytest.raises(InternalError, match="expected event 0, got 1"):
            await anext(stream)


async def test_malformed_event_is_an_internal_error(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    async with await relay.submit(job) as stream:
        await publish(redis, job, b'{"type": "token", "seq": 0}')
        with pytest.raises(InternalError) as info:
            await anext(stream)
        assert info.value.code == "bad_event"


async def test_error_event_ends_the_stream(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    error = ErrorEvent(seq=1, code="context_length_exceeded", message="too long", param="prompt")
    async with await relay.submit(job) as stream:
        await publish(redis, job, START, error, TokenEvent(seq=2, text="late"))
        assert await drain(stream) == [START, error]
    assert await redis.get(cancel_key_for(job.request_id)) is None  # finished: nothing to cancel


async def test_closing_before_done_sets_the_cancel_key(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    stream = await relay.submit(job)
    await publish(redis, job, START, TokenEvent(seq=1, text="Hel"))
    assert [await anext(stream), await anext(stream)] == HAPPY[:2]
    assert await redis.get(cancel_key_for(job.request_id)) is None
    await stream.aclose()
    assert await redis.get(cancel_key_for(job.request_id)) is not None
    assert 0 < await redis.ttl(cancel_key_for(job.request_id)) <= QUEUE_TIMEOUT + 60
    assert await subscribers(redis, job) == 0


async def test_closing_after_done_unsubscribes_without_cancelling(
    relay: Relay, redis: FakeRedis, live
) -> None:
    job = make_job()
    stream = await relay.submit(job)
    assert await subscribers(redis, job) == 1
    await publish(redis, job, *HAPPY)
    await drain(stream)
    await stream.aclose()
    await stream.aclose()  # twice is harmless
    assert await subscribers(redis, job) == 0
    assert await redis.get(cancel_key_for(job.request_id)) is None


async def test_unknown_model_is_not_found_and_nothing_is_sent(relay: Relay, celery: RecordingCelery) -> None:
    with pytest.raises(ModelNotFound) as info:
        await relay.submit(make_job("no-such-model"))
    assert info.value.status == 404 and info.value.param == "model"
    assert celery.sent == []


async def test_known_model_without_heartbeat_is_unavailable(relay: Relay, celery: RecordingCelery) -> None:
    with pytest.raises(ServiceUnavailable) as info:
        await relay.submit(make_job("idle"))
    assert info.value.status == 503 and info.value.code == "model_unavailable"
    assert celery.sent == []


async def test_stale_heartbeat_counts_as_no_worker(
    relay: Relay, redis: FakeRedis, registry: Registry
) -> None:
    await heartbeat(redis, "tiny", "w-old", age=TTL + 5)
    assert await registry.live_workers("tiny") == []
    with pytest.raises(ServiceUnavailable):
        await relay.submit(make_job("tiny"))
    await heartbeat(redis, "tiny", "w-new", age=TTL - 2)
    assert await registry.live_workers("tiny") == ["w-new"]
    assert await registry.live_models() == ["tiny"]


async def test_model_announced_by_a_worker_is_known(
    relay: Relay, redis: FakeRedis, registry: Registry
) -> None:
    await redis.sadd(MODELS_SEEN_KEY, "extra")
    assert await registry.known_models() == ["extra", "idle", "tiny"]
    with pytest.raises(ServiceUnavailable):
        await relay.submit(make_job("extra"))


async def test_a_request_the_model_cannot_serve_is_refused_before_queueing(
    relay: Relay, redis: FakeRedis, registry: Registry, celery: RecordingCelery
) -> None:
    await heartbeat(redis, "tiny", "w1")
    await redis.hset(cards_key("tiny"), "w1", ModelCard(capabilities=EMBEDS, max_model_len=512).model_dump_json())
    chat = GenerateJob(request_id="chatcmpl-x", model="tiny", messages=(ChatMessage(role="user", content="Hi"),),
                       expires_at=time.time() + 60)  # fmt: skip
    for job in (chat, make_job()):
        with pytest.raises(InvalidRequest) as info:
            await relay.submit(job)
        assert info.value.status == 400 and info.value.param == "model"
        assert "does not support" in info.value.message and "embeddings" in info.value.message
    assert celery.sent == []


async def test_cards_of_live_workers_merge_and_a_worker_without_one_is_not_refused(
    relay: Relay, redis: FakeRedis, registry: Registry, celery: RecordingCelery
) -> None:
    await heartbeat(redis, "tiny", "w1")
    await heartbeat(redis, "tiny", "w2")
    await heartbeat(redis, "tiny", "dead", age=TTL + 5)
    await redis.hset(cards_key("tiny"), mapping={
        "w1": ModelCard(capabilities=("chat",), max_model_len=2048).model_dump_json(),
        "w2": ModelCard(capabilities=GENERATES, max_model_len=1024).model_dump_json(),
        "dead": ModelCard(capabilities=EMBEDS, max_model_len=9).model_dump_json(),
    })  # fmt: skip
    cards = await registry.cards(await registry.live_map())
    assert cards["tiny"] == ModelCard(capabilities=GENERATES, max_model_len=1024)
    await redis.delete(cards_key("tiny"))
    assert (await registry.cards(await registry.live_map()))["tiny"] is None
    stream = await relay.submit(make_job())  # no card yet (an older worker): the worker decides
    await stream.aclose()
    assert len(celery.sent) == 1


async def test_failed_send_leaves_no_subscription(redis: FakeRedis, registry: Registry, live) -> None:
    relay = Relay(redis, RecordingCelery(redis, fail=True), registry, QUEUE_TIMEOUT, 10.0)
    job = make_job()
    with pytest.raises(RuntimeError, match="broker down"):
        await relay.submit(job)
    assert await subscribers(redis, job) == 0
    assert await redis.get(cancel_key_for(job.request_id)) is not None


async def test_a_broker_error_while_sending_is_queue_unavailable(redis: FakeRedis, registry: Registry, live) -> None:
    """kombu, not redis-py, raises when Redis fails under send_task (after its retries)."""
    broken = RecordingCelery(redis, error=kombu.exceptions.OperationalError("Error 111 connecting"))
    job = make_job()
    with pytest.raises(ServiceUnavailable) as info:
        await Relay(redis, broken, registry, QUEUE_TIMEOUT, 10.0).submit(job)
    assert info.value.code == "queue_unavailable"
    assert await subscribers(redis, job) == 0


async def test_cleanup_unsubscribes_even_when_redis_refuses_the_cancel_key(
    relay: Relay, redis: FakeRedis, live, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job()
    stream = await relay.submit(job)

    async def refused(*_: Any, **__: Any) -> None:
        raise redis_exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr(redis, "set", refused)
    await stream.aclose()
    assert await subscribers(redis, job) == 0


async def test_keepalives_hold_off_the_idle_timeout_and_are_not_yielded(
    redis: FakeRedis, celery: RecordingCelery, registry: Registry, live
) -> None:
    relay = Relay(redis, celery, registry, queue_timeout=QUEUE_TIMEOUT, idle_timeout=1.2)
    job = make_job()
    async with await relay.submit(job) as stream:
        await publish(redis, job, START)
        assert await anext(stream) == START
        for seq in range(1, 6):  # 2.5 s of held-back text: longer than the idle timeout
            await publish(redis, job, KeepAliveEvent(seq=seq))
            await asyncio.sleep(0.5)
        await publish(redis, job, TokenEvent(seq=6, text="Hello"), DONE.model_copy(update={"seq": 7}))
        assert await drain(stream) == [TokenEvent(seq=6, text="Hello"), DONE.model_copy(update={"seq": 7})]


async def test_unreachable_redis_is_queue_unavailable(
    relay: Relay, server: fakeredis.FakeServer, live
) -> None:
    server.connected = False
    with pytest.raises(ServiceUnavailable) as info:
        await relay.submit(make_job())
    assert info.value.code == "queue_unavailable"


async def test_worker_that_stops_heartbeating_mid_request_is_lost(
    relay: Relay, redis: FakeRedis, live
) -> None:
    job = make_job()
    async with await relay.submit(job) as stream:
        await publish(redis, job, START)
        assert await anext(stream) == START
        await heartbeat(redis, "tiny", "w1", age=TTL + 5)
        with pytest.raises(ServiceUnavailable) as info:
            await anext(stream)  # one poll interval, then the heartbeat check
        assert info.value.code == "worker_lost"


async def test_collect_builds_a_valid_whole_body(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    stream = await relay.submit(job)
    await publish(redis, job, *HAPPY)
    await anext(stream)  # the start event, which respond() reads before rendering
    env = Envelope(id=job.request_id, model="tiny", fmt=Format.TEXT)
    async with Choices([stream]) as choices:
        body = (await collect(choices, env, Reply(Format.TEXT, stream=False), 1)).to_dict()
    assert_valid(body, "CreateCompletionResponse")
    assert body["choices"][0]["text"] == "Hello"
    assert body["usage"]["total_tokens"] == 4
    assert await subscribers(redis, job) == 0


async def test_sse_stream_ends_with_usage_and_done(relay: Relay, redis: FakeRedis, live) -> None:
    job = make_job()
    stream = await relay.submit(job)
    await publish(redis, job, *HAPPY)
    await anext(stream)
    env = Envelope(id=job.request_id, model="tiny", fmt=Format.CHAT)
    async with Choices([stream]) as choices:
        reply = Reply(Format.CHAT, stream=True, include_usage=True)
        payloads = [p async for p in sse_stream(choices, env, reply, 1)]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_choices_merge_several_streams_tagged_with_their_index(relay: Relay, redis: FakeRedis, live) -> None:
    jobs = [make_job(), make_job()]
    streams = [await relay.submit(job) for job in jobs]
    for stream in streams:
        pass
    await publish(redis, jobs[1], *HAPPY)
    await publish(redis, jobs[0], START, TokenEvent(seq=1, text="Bye"), DoneEvent(seq=2, finish_reason="length",
                  usage=Usage(prompt_tokens=2, completion_tokens=1)))  # fmt: skip
    for stream in streams:
        await anext(stream)
    env = Envelope(id="cmpl-x", model="tiny", fmt=Format.TEXT)
    async with Choices(streams) as choices:
        body = (await collect(choices, env, Reply(Format.TEXT, stream=False, n=2), 2)).to_dict()
    assert [c["text"] for c in body["choices"]] == ["Bye", "Hello"]
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "stop"]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}  # one prompt, n=2
    assert all([await subscribers(redis, job) == 0 for job in jobs])


async def test_a_simultaneous_burst_cannot_overshoot_the_backlog_limit(redis: FakeRedis, registry, live) -> None:
    """All of a burst pass LLEN before any task reaches the list; the gateway counts its own sends."""

    class SlowCelery(RecordingCelery):
        def send_task(self, name: str, args: list[Any], **options: Any) -> None:
            time.sleep(0.05)  # the push lands after every request of the burst has been checked
            anyio.from_thread.run(redis.rpush, options["queue"], "task")

    relay = Relay(redis, SlowCelery(redis), registry, queue_timeout=QUEUE_TIMEOUT, idle_timeout=10.0, max_queue=3)

    async def one() -> str:
        try:
            stream = await relay.submit(make_job())
        except RateLimited:
            return "429"
        await stream.aclose()
        return "queued"

    outcomes = await asyncio.gather(*(one() for _ in range(10)))
    assert sorted(outcomes) == ["429"] * 7 + ["queued"] * 3
    assert await redis.llen("tiny") == 3
