"""Faults with real processes: a client that leaves, a worker killed mid-stream, nothing left behind.

The model is `echo-slow` (no weights, 50 ms a decode step), so a request runs long enough to
be interrupted."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from protocol import channel_for
from tests.integration.processes import Worker, live_worker
from tests.integration.processes import eventually as _wait

LONG = [{"role": "user", "content": "a long echo, please"}]


@pytest.fixture
def slow_worker(env, workdir, redis_server) -> Iterator[Worker]:
    with live_worker(["echo-slow"], env, workdir, redis_server.client, stop_signal=signal.SIGKILL) as worker:
        yield worker


def _active(celery_control, worker: Worker) -> list:
    replies = celery_control.inspect(destination=[worker.name], timeout=3).active() or {}
    return replies.get(worker.name, [])




def test_closing_a_stream_stops_the_worker_and_frees_its_slot(
    client, redis_server, slow_worker, celery_control
) -> None:
    stream = client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2000, stream=True)
    chunks = [next(stream) for _ in range(5)]
    request_id = chunks[0].id
    assert len(_active(celery_control, slow_worker)) == 1
    stream.close()  # 2000 steps would take 100 s
    assert _wait(lambda: not _active(celery_control, slow_worker), 10), "the worker still generates"
    assert redis_server.client.exists(f"queuechat:cancel:{request_id}")
    assert redis_server.client.pubsub_numsub(channel_for(request_id))[0][1] == 0
    assert "cancelled by its client" in slow_worker.log_tail(20_000)


def test_a_request_abandoned_while_queued_is_never_generated(
    gateway, redis_server, slow_worker, celery_control
) -> None:
    control = celery_control
    assert control.cancel_consumer("echo-slow", destination=[slow_worker.name], reply=True, timeout=5)
    before = set(redis_server.client.scan_iter("queuechat:cancel:*"))
    body = {"model": "echo-slow", "messages": LONG, "max_tokens": 50}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=1.0)
    assert _wait(lambda: len(set(redis_server.client.scan_iter("queuechat:cancel:*")) - before) == 1, 10)
    (key,) = set(redis_server.client.scan_iter("queuechat:cancel:*")) - before
    request_id = key.decode().rsplit(":", 1)[1]
    control.add_consumer("echo-slow", destination=[slow_worker.name], reply=True, timeout=5)
    assert _wait(lambda: f"dropping {request_id}" in slow_worker.log_tail(50_000), 15)
    assert redis_server.client.llen("echo-slow") == 0


def test_killing_the_worker_mid_stream_ends_the_stream_with_an_error(client, redis_server, slow_worker) -> None:
    stream = client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2000, stream=True)
    for _ in range(3):
        next(stream)
    slow_worker.stop(signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    waited = time.monotonic() - killed
    assert "stopped" in str(err.value.message)
    assert waited < 15, f"the client waited {waited:.1f} s"  # a hang guard; typically ~4 s (TTL 3 s + 1 s poll)
    print(f"error reached the client {waited:.1f} s after SIGKILL")


def test_a_gateway_killed_mid_stream_makes_the_worker_stop(env, workdir, slow_worker, celery_control) -> None:
    """Nobody sets a cancel key then; the worker notices that its events reach no subscriber."""
    from tests.integration.processes import Gateway

    doomed = Gateway(env, workdir)
    try:
        client = openai.OpenAI(base_url=f"{doomed.base_url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2000, stream=True)
        for _ in range(3):
            next(stream)
        doomed.stop(signal.SIGKILL)
        assert _wait(lambda: not _active(celery_control, slow_worker), 10), "the worker still generates"
        assert "no listener left" in slow_worker.log_tail(20_000)
    finally:
        doomed.stop(signal.SIGKILL)


def test_a_worker_takes_only_as_many_tasks_as_it_has_slots(
    client, redis_server, slow_worker, celery_control
) -> None:
    """echo-slow has 4 slots: of 6 long requests, 4 run and 2 wait, visible, in its Redis list."""
    streams = [client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2000, stream=True)
               for _ in range(4)]  # fmt: skip
    for stream in streams:
        next(stream)
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(client.chat.completions.create, model="echo-slow", messages=LONG, max_tokens=2)
                   for _ in range(2)]  # fmt: skip
        assert _wait(lambda: redis_server.client.llen("echo-slow") == 2, 10)
        time.sleep(1)
        assert redis_server.client.llen("echo-slow") == 2, "the worker prefetched beyond its slots"
        assert len(_active(celery_control, slow_worker)) == 4
        for stream in streams:
            stream.close()
        assert all(f.result(timeout=30).choices[0].message.content == "a " for f in waiting)
