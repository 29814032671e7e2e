"""A backlog that outlives Redis: requests queued while no worker consumes, Redis stopped and
started again on its append-only file, then a worker comes: every request is served, none twice,
and those whose expiry passed in the meantime are dropped, not run.

Background responses are the requests here: their record and event log live in Redis, so after
the restart the gateway can still say how each one ended, and the log shows who started it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import celery
import httpx
import pytest

from gateway.jobs import LATE_START_SECONDS  # a job no worker started ends as expired this late
from protocol import StartEvent, decode_event, event_log_key
from protocol.settings import QueueSettings
from tests.integration.processes import Gateway, RedisServer, Worker, eventually, pause_queue, stack_env
from tests.tiny_models import write_models_file

MODEL = "echo-fast"
SERVED = 20  # queued with the default expiry: all must be served once
LATE = 4  # queued through a gateway whose tasks expire after QUEUE_TIMEOUT seconds
QUEUE_TIMEOUT = 3


@pytest.fixture
def cleanup() -> Iterator[list]:
    """Whatever the test started, stopped in reverse order however it ends."""
    started: list = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, celery.Celery):
            thing.close()
        else:
            thing.stop()


def _create(gateway: Gateway, text: str) -> str:
    ask = {"model": MODEL, "input": text, "max_output_tokens": len(text), "background": True}
    reply = httpx.post(f"{gateway.base_url}/v1/responses", json=ask, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "queued"
    return reply.json()["id"]


def _retrieve(gateway: Gateway, response_id: str) -> dict | None:
    """The response as the gateway shows it now, or None while the gateway cannot answer yet."""
    try:
        reply = httpx.get(f"{gateway.base_url}/v1/responses/{response_id}", timeout=10)
    except httpx.HTTPError:
        return None
    return reply.json() if reply.status_code == 200 else None


def _starts(server: RedisServer, response_id: str) -> list[StartEvent]:
    entries = server.client.xrange(event_log_key(response_id))
    events = [decode_event(fields[b"event"]) for _, fields in entries]
    return [e for e in events if isinstance(e, StartEvent)]


def _log_count(log: str, pattern: str, task_id: str) -> int:
    return len(re.findall(pattern.format(task=re.escape(f"queuechat.generate[{task_id}]")), log))


def test_a_queued_backlog_survives_a_redis_restart_and_is_served_once(tmp_path: Path, cleanup: list) -> None:
    models = write_models_file(tmp_path / "models.yaml", {MODEL: {"adapter": "echo", "slots": 4}})
    redis = RedisServer(tmp_path, persistent=True)
    cleanup.append(redis)
    env = stack_env(redis.url, models, QUEUECHAT_FILES_DIR=str(tmp_path / "files"))
    # A live worker whose consumer is paused: the gateway accepts requests for its model, and
    # nothing takes them off the queue.
    idle = Worker([MODEL], env, tmp_path)
    cleanup.append(idle)
    idle.wait_live(redis.client, 120)
    control = celery.Celery("queuechat-tests", set_as_current=False)
    control.conf.update(QueueSettings(redis_url=redis.url).celery_conf())
    cleanup.append(control)
    pause_queue(control.control, MODEL, idle.name)
    gateway = Gateway(env, tmp_path)
    cleanup.append(gateway)

    hasty = Gateway({**env, "QUEUECHAT_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT)}, tmp_path)
    cleanup.append(hasty)
    late = [_create(hasty, f"late {i}") for i in range(LATE)]
    late_sent = time.monotonic()
    hasty.stop()
    served = [_create(gateway, f"backlog {i}") for i in range(SERVED)]
    assert redis.client.llen(MODEL) == SERVED + LATE

    idle.stop()  # no worker at all now
    control.close()
    assert not any(_log_count(idle.log_tail(1_000_000), r"{task} received", i) for i in served + late)

    redis.stop()  # SIGTERM: Redis fsyncs its append-only file and exits
    assert redis.popen.returncode == 0, redis.log_tail()
    redis = RedisServer(tmp_path, port=redis.port, persistent=True)  # same port and folder: replays the file
    cleanup.append(redis)
    assert redis.client.llen(MODEL) == SERVED + LATE, "the backlog did not survive the restart"
    time.sleep(max(0.0, late_sent + QUEUE_TIMEOUT + 1 - time.monotonic()))  # the late ones have expired

    worker = Worker([MODEL], env, tmp_path)
    cleanup.append(worker)
    worker.wait_live(redis.client, 120)

    def all_done() -> bool:
        return all((r := _retrieve(gateway, i)) is not None and r["status"] not in ("queued", "in_progress")
                   for i in served)  # fmt: skip

    assert eventually(all_done, timeout=90, every=0.5), worker.log_tail()
    log = worker.log_tail(1_000_000)
    for i, response_id in enumerate(served):
        response = _retrieve(gateway, response_id)
        # The echo model repeats its input one character a token: all of it, then max_output_tokens.
        assert response is not None and response["status"] == "incomplete", response
        assert response["output"][0]["content"][0]["text"] == f"backlog {i}"
        starts = _starts(redis, response_id)
        assert [s.worker for s in starts] == [worker.node_name], "started once, by the new worker"
        assert _log_count(log, r"{task} received", response_id) == 1, response_id

    # The late ones: the worker received each once and discarded it unrun (Celery's expiry) ...
    for response_id in late:
        assert _log_count(log, r"Discarding revoked task: {task}", response_id) == 1, log[-4000:]
        assert _starts(redis, response_id) == []
    assert redis.client.llen(MODEL) == 0

    # ... and the gateway ends each as expired once its grace for a late start has passed.
    def expired(response_id: str) -> bool:
        response = _retrieve(gateway, response_id)
        return response is not None and response["status"] == "failed"

    wait = LATE_START_SECONDS + QUEUE_TIMEOUT + 30
    assert eventually(lambda: all(expired(i) for i in late), timeout=wait, every=1)
    for response_id in late:
        entries = redis.client.xrange(event_log_key(response_id))
        events = [decode_event(fields[b"event"]) for _, fields in entries]
        assert [e.type for e in events] == ["error"] and events[0].code == "expired"
    assert worker.popen.poll() is None and gateway.popen.poll() is None, "nothing else was restarted"
