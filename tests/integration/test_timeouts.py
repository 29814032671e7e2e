"""A request that produces nothing in time ends with a clear error; so does one nobody starts."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import openai
import pytest

from tests.integration.processes import Gateway, Worker

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def impatient(env, workdir, redis_server) -> Iterator[tuple[Gateway, Worker]]:
    worker = Worker(["echo-stuck"], env, workdir)
    gateway = None
    try:
        worker.wait_live(redis_server.client)
        gateway = Gateway({**env, "QUEUECHAT_IDLE_TIMEOUT": "1.5", "QUEUECHAT_QUEUE_TIMEOUT": "2"}, workdir)
        yield gateway, worker
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop(signal.SIGKILL)


def _client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_a_worker_silent_mid_stream_ends_it_with_a_timeout_error(impatient) -> None:
    gateway, _ = impatient
    stream = _client(gateway).chat.completions.create(model="echo-stuck", messages=USER, max_tokens=5, stream=True)
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "produced nothing within" in err.value.message


def test_a_request_no_worker_starts_in_time_is_a_503_timeout(impatient, redis_server, celery_control) -> None:
    gateway, worker = impatient
    control = celery_control
    assert control.cancel_consumer("echo-stuck", destination=[worker.name], reply=True, timeout=5)
    try:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as err:
            _client(gateway).chat.completions.create(model="echo-stuck", messages=USER, max_tokens=1)
        assert err.value.status_code == 503 and err.value.body["code"] == "timeout"
        assert time.monotonic() - started < 15  # a hang guard, not a benchmark
    finally:
        control.add_consumer("echo-stuck", destination=[worker.name], reply=True, timeout=5)
        redis_server.client.delete("echo-stuck")
