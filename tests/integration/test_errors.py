"""Every error reaches the client in OpenAI's shape with the right status, and nothing hangs."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from protocol import ErrorEvent, channel_for, decode_event
from tests.integration.processes import Worker
from tests.integration.sse import post_stream
from tests.spec import assert_valid

USER = [{"role": "user", "content": "hi"}]


def post(gateway, path: str, body) -> httpx.Response:
    kwargs = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(f"{gateway.base_url}{path}", timeout=30, headers={"content-type": "application/json"}, **kwargs)


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert_valid(body, "ErrorResponse")
    assert "Traceback" not in response.text
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_unknown_model_is_404(gateway, path: str) -> None:
    body = {"model": "no-such-model", "messages": USER, "prompt": "x"}
    assert_error(post(gateway, path, body), 404, param="model", code="model_not_found")


def test_unknown_model_is_404_through_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=USER)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": "tiny-a"}, "messages"),
        ({"model": "tiny-a", "messages": []}, "messages"),
        ({"model": "tiny-a", "messages": "hi"}, "messages"),
        ({"model": "tiny-a", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "tiny-a", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "tiny-a", "messages": USER, "max_completion_tokens": -3}, "max_completion_tokens"),
        ({"model": "tiny-a", "messages": USER, "temperature": 2.5}, "temperature"),
        ({"model": "tiny-a", "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": "tiny-a", "messages": USER, "top_p": 1.5}, "top_p"),
        ({"model": "tiny-a", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "tiny-a", "messages": USER, "n": 65}, "n"),
        ({"model": "tiny-a", "messages": USER, "stream": False, "stream_options": {"include_usage": True}},
         "stream_options"),
    ],
)
def test_invalid_chat_request_is_400_naming_the_param(gateway, body: dict, param: str) -> None:
    assert_error(post(gateway, "/v1/chat/completions", body), 400, param=param)


def test_invalid_json_is_400(gateway) -> None:
    error = assert_error(post(gateway, "/v1/chat/completions", '{"model": "tiny-a", "messages": ['), 400)
    assert error["code"] == "invalid_json"


def test_bad_sdk_request_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:  # (0 is valid on completions: with echo, the prompt is scored)
        client.completions.create(model="tiny-a", prompt="x", max_tokens=-1)
    assert err.value.body["param"] == "max_tokens"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_prompt_longer_than_context_is_400(gateway, path: str, stream: bool) -> None:
    long_text = "Queues hold work until a worker is free. " * 120  # far beyond the tiny model's 256 tokens
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": long_text}], "prompt": long_text,
            "stream": stream}  # fmt: skip
    if stream:
        status, payloads, _ = post_stream(gateway.base_url, path, body)
        response = httpx.Response(status, content=payloads[0])
    else:
        response = post(gateway, path, body)
    error = assert_error(response, 400, code="context_length_exceeded")
    assert "256" in error["message"]
    assert error["param"] == ("messages" if "chat" in path else "prompt")


def test_known_model_without_worker_is_503_at_once(client: openai.OpenAI) -> None:
    quick = client.with_options(timeout=10)
    with pytest.raises(openai.InternalServerError) as err:
        quick.chat.completions.create(model="tiny-idle", messages=USER)
    assert err.value.status_code == 503
    assert err.value.body["code"] == "model_unavailable"


def test_queued_request_fails_with_503_when_its_only_worker_dies(
    client, env, workdir, redis_server, celery_control
) -> None:
    """A worker is killed while a request waits in its queue: the client gets 503, not a hang."""
    worker = Worker(["tiny-idle"], env, workdir)
    try:
        worker.wait_live(redis_server.client)
        assert celery_control.cancel_consumer("tiny-idle", destination=[worker.name], reply=True, timeout=5)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                client.with_options(timeout=30).chat.completions.create, model="tiny-idle", messages=USER
            )
            deadline = time.monotonic() + 10
            while redis_server.client.llen("tiny-idle") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            worker.stop(signal.SIGKILL)
            with pytest.raises(openai.InternalServerError) as err:
                pending.result(timeout=30)
        assert err.value.status_code == 503
        assert err.value.body["code"] == "model_unavailable"
    finally:
        worker.stop(signal.SIGKILL)
        redis_server.client.delete("tiny-idle")


def test_worker_answers_a_job_for_a_model_it_does_not_hold_with_an_error_event(redis_server) -> None:
    """The worker's task body, against real Redis: an error event, not a crash."""
    import redis as redis_lib

    from protocol import GenerateJob
    from workers.heartbeat import WorkerState
    from workers.publisher import Outbox
    from workers.settings import WorkerSettings
    from workers.tasks import run_job

    client = redis_lib.Redis.from_url(redis_server.url)
    state = WorkerState("w@test", WorkerSettings(redis_url=redis_server.url), client, engines={},
                        outbox=Outbox(client))  # fmt: skip
    job = GenerateJob(request_id="req-x", model="elsewhere", prompt="hi", expires_at=time.time() + 60)
    listener = client.pubsub()
    listener.subscribe(channel_for(job.request_id))
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    run_job(state, job.model_dump(mode="json"))
    message = listener.get_message(timeout=5)
    event = decode_event(message["data"])
    assert isinstance(event, ErrorEvent)
    assert (event.seq, event.code, event.param) == (0, "model_not_found", "model")
    run_job(state, {"request_id": "req-y", "model": 5})  # malformed: still no exception
    listener.close()


def test_worker_for_a_queue_that_names_no_model_exits_with_a_clear_message(env, workdir) -> None:
    worker = Worker(["no-such-model"], env, workdir)
    try:
        assert worker.popen.wait(timeout=60) == 2
    finally:
        worker.stop()
    log = worker.log_tail()
    assert "this worker consumes no model queue" in log and "tiny-a" in log
    assert "Traceback" not in log
