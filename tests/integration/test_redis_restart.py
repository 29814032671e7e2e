"""Redis stops under load and comes back: errors while it is gone, service resumes by itself."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.integration.processes import Gateway, RedisServer, Worker, stack_env

LONG = [{"role": "user", "content": "a long echo, please"}]


def test_service_resumes_without_restarting_anything(tmp_path, models_file) -> None:
    redis = RedisServer(tmp_path)
    env = stack_env(redis.url, models_file)
    worker = Worker(["echo-slow"], env, tmp_path)
    gateway = None
    try:
        worker.wait_live(redis.client)
        gateway = Gateway(env, tmp_path)
        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=30)
        stream = client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2000, stream=True)
        next(stream)

        redis.stop()
        with pytest.raises(openai.APIError):  # the open stream ends with an error, not a hang
            for _ in stream:
                pass
        assert httpx.get(f"{gateway.base_url}/health").status_code == 503
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=3)
        assert err.value.status_code == 503

        redis = RedisServer(tmp_path, port=redis.port)  # the same address, empty
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=3)
            except openai.APIError:
                time.sleep(0.5)
        assert answer is not None and answer.choices[0].message.content == "a l"
        assert httpx.get(f"{gateway.base_url}/health").status_code == 200
        assert worker.popen.poll() is None and gateway.popen.poll() is None, "nothing was restarted"
        assert "Unrecoverable error" not in worker.log_tail(100_000)
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop()
        redis.stop()
